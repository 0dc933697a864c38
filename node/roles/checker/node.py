"""Wiring the checker role into ``kaisar node --role checker`` (config -> service).

A checker cannot work without a chain: the checker set, jobs and certificates live
there. ``[chain] rpc`` must reach a chain shared with the rest of the network (an
anvil or other JSON-RPC URL) and ``[chain] deployment`` name its deployment file;
``rpc = "embedded"`` starts a private in-process chain that nobody else sees, which is
only useful inside ``kaisar devnet`` (one process).
"""

from __future__ import annotations

import logging

from node.config import Config
from node.errors import UserError
from node.p2p.host import KaisarHost
from node.roles.checker.service import CheckerService, CheckerSettings

log = logging.getLogger("kaisar.checker")


async def checker_service(cfg: Config):
    """A role service (``async fn(host)``) running the checker for this config."""
    if not cfg.chain.deployment:
        raise UserError(
            "a checker needs a chain: set [chain] rpc to a JSON-RPC URL shared with the "
            "network and [chain] deployment to its deployment file (see docs/CHECKER.md)"
        )
    from node.roles.provider.node import open_chain

    chain = await open_chain(cfg)
    settings = CheckerSettings.from_config(cfg.checker)
    classes = class_table(cfg)

    async def run(host: KaisarHost) -> None:
        service = CheckerService(
            host, host.identity, chain, cfg.path(cfg.node.data_dir), settings, classes=classes
        )
        await service.run()

    return run


def class_table(cfg: Config):
    """configs/gpu_classes.toml, with ``[checker] popw_target_seconds`` /
    ``popw_allowance_seconds`` applied when set (None: the service loads the default)."""
    c = cfg.checker
    if not c.popw or (c.popw_target_seconds == 0 and c.popw_allowance_seconds == 0):
        return None
    import dataclasses

    from node.popw.classes import load_table

    table = load_table()
    policy = table.policy
    if c.popw_target_seconds:
        policy = dataclasses.replace(policy, target_seconds=c.popw_target_seconds)
    if c.popw_allowance_seconds:
        policy = dataclasses.replace(policy, network_allowance_seconds=c.popw_allowance_seconds)
    return dataclasses.replace(table, policy=policy)
