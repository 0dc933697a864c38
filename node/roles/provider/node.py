"""Wiring the provider role into ``kaisar node --role provider`` (config -> service)."""

from __future__ import annotations

import logging

from node.config import Config
from node.errors import UserError
from node.p2p.host import KaisarHost
from node.roles.provider.runtime import ContainerRuntime
from node.roles.provider.service import STATE_FILE, ProviderService, ProviderSettings

log = logging.getLogger("kaisar.provider")


async def open_chain(cfg: Config):
    """The chain facade from ``[chain]``, or None when no deployment is configured."""
    if not cfg.chain.deployment:
        log.warning("event=no_chain_deployment deploys=refused hint='set chain.deployment'")
        return None
    from node.chain.api import KaisarChain
    from node.chain.errors import ChainError

    try:
        return await KaisarChain.open(cfg.chain.rpc, cfg.path(cfg.chain.deployment))
    except ChainError as exc:
        raise UserError(f"chain: {exc}") from None


async def provider_service(cfg: Config):
    """A role service (``async fn(host)``) running the provider for this config."""
    chain = await open_chain(cfg)
    p = cfg.provider

    async def run(host: KaisarHost) -> None:
        runtime = ContainerRuntime(
            host.address, docker_host=p.docker_host or None, allow_pull=p.allow_pull
        )
        service = ProviderService(
            host,
            ProviderSettings.from_config(p),
            cfg.path(cfg.node.data_dir) / STATE_FILE,
            chain=chain,
            runtime=runtime,
        )
        try:
            await service.run()
        finally:
            runtime.close()

    return run
