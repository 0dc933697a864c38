"""The whole network in one process: chain, checkers, providers (and an explorer).

``open_stack`` is what `kaisar devnet` runs and what end-to-end tests use:

- a chain: the embedded eth-tester chain (default) or a local anvil, with the Kaisar
  contracts deployed and the genesis checkers (license + stake + node key) registered;
- N checker and M provider hosts on 127.0.0.1, connected, each running its role
  service; providers run containers on the private Docker Engine (scripts/dockerd.sh);
- a funded demo end-user key, and a JSON file with what an outside client needs
  (``devnet.json``: rpc, deployment, bootstrap, network, demo_key).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.eip712 import Domain
from node.errors import UserError
from node.identity import Identity, save_keystore

log = logging.getLogger("kaisar.devnet")

ETHER = 10**18
CHECKER_STAKE = 10 * ETHER
DEMO_FUNDS = 1000 * ETHER
DEVNET_EPOCH_SECONDS = 20.0  # a failed first PoPW epoch is retried 20 s later, not 60
DEVNET_POPW_SECONDS = 0.5
DEVNET_POPW_ALLOWANCE = 4.0
DEVNET_KEY_PASSWORD = "kaisar-devnet"  # throwaway devnet keys only
# anvil's first development account: a published test key, never a real one.
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@dataclass
class Stack:
    workdir: Path
    network: str
    dev: Any  # node.chain.genesis.DevChain
    checkers: list[Any] = field(default_factory=list)  # KaisarHost
    providers: list[Any] = field(default_factory=list)  # KaisarHost
    provider_services: list[Any] = field(default_factory=list)
    checker_services: list[Any] = field(default_factory=list)
    user: Identity | None = None
    user_host: Any = None
    wire_domain: Any = None
    rpc: str = "embedded"
    info_path: Path | None = None
    explorer_url: str | None = None
    provider_runtimes: list[Any] = field(default_factory=list)
    provider_scopes: list[trio.CancelScope] = field(default_factory=list)

    @property
    def chain(self) -> Any:
        return self.dev.chain

    @property
    def domain(self) -> Any:
        return self.dev.deployment.domain

    def bootstrap(self) -> list[str]:
        return [self.checkers[0].addrs()[0]] if self.checkers else []

    async def kill_provider(self, i: int) -> None:
        """Provider i crashes (end-to-end tests): its service stops (no more ads, status
        or PoPW answers), its stream protocols are gone and its containers removed. The
        host stays up as a bare gossip peer, so only the provider role has failed."""
        from node.roles.provider import service as ps

        self.provider_scopes[i].cancel()
        host = self.providers[i]
        for proto in (ps.POPW_PROTOCOL, ps.DEPLOY_PROTOCOL, ps.TUNNEL_PROTOCOL, ps.LOGS_PROTOCOL, ps.STATUS_PROTOCOL):
            host.host.remove_stream_handler(proto)
        await self.provider_runtimes[i].cleanup_all()


def devnet_class_table() -> Any:
    """configs/gpu_classes.toml with challenges sized for a devnet on one machine.

    Every provider of a devnet proves on the same cores as everything else, several
    at once: challenges target DEVNET_POPW_SECONDS of honest work (instead of ~2 s)
    with a wider network allowance, so an honest but CPU-starved prover is not late.
    The verification rules are unchanged.
    """
    import dataclasses

    from node.popw.classes import load_table

    table = load_table()
    policy = dataclasses.replace(
        table.policy,
        target_seconds=DEVNET_POPW_SECONDS,
        network_allowance_seconds=DEVNET_POPW_ALLOWANCE,
    )
    return dataclasses.replace(table, policy=policy)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def _anvil() -> AsyncIterator[str]:
    """A private anvil on a free loopback port (installed by scripts/install-anvil.sh)."""
    root = Path(__file__).resolve().parent.parent
    candidates = [root / ".tools" / "node_modules" / ".bin" / "anvil", shutil.which("anvil")]
    binary = next((str(c) for c in candidates if c and Path(c).exists()), None)
    if binary is None:
        raise UserError("anvil not installed: run scripts/install-anvil.sh or use --chain embedded")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.aclose()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise UserError("anvil exited at start") from None
                    await trio.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def _open_chain(kind: str, checkers: list[Any], stack: AsyncExitStack) -> tuple[Any, str]:
    from node.chain.genesis import bootstrap, start_embedded

    if kind == "embedded":
        return await start_embedded(checkers), "embedded"
    if kind == "anvil":
        from node.chain.client import ChainClient

        url = await stack.enter_async_context(_anvil())
        client = ChainClient.connect(url)
        return await bootstrap(client, Identity.from_hex(ANVIL_DEV_KEY), checkers), url
    raise UserError("--chain must be 'embedded' or 'anvil'")


@asynccontextmanager
async def open_stack(
    *,
    checkers: int = 4,
    providers: int = 3,
    workdir: Path,
    chain: str = "embedded",
    network: str = "devnet",
    provider_settings: Any = None,
    checker_settings: Any = None,
    runtime_factory: Any = None,
    explorer: bool = True,
) -> AsyncIterator[Stack]:
    """Start the network; everything stops when the block exits."""
    from node.chain.genesis import GenesisChecker
    from node.devnet import start_network
    from node.roles.checker.service import CheckerService, CheckerSettings
    from node.roles.provider.runtime import ContainerRuntime, Limits
    from node.roles.provider.service import ProviderService, ProviderSettings

    workdir.mkdir(parents=True, exist_ok=True)
    checker_ids = [Identity.generate() for _ in range(checkers)]
    provider_ids = [Identity.generate() for _ in range(providers)]
    user = Identity.generate()
    async with AsyncExitStack() as stack:
        genesis = [GenesisChecker(k, k, CHECKER_STAKE) for k in checker_ids]
        dev, rpc = await _open_chain(chain, genesis, stack)
        for ident in provider_ids:
            await dev.fund(ident.address, 10 * ETHER)
        await dev.fund(user.address, DEMO_FUNDS)
        idents = checker_ids + provider_ids + [user]
        # Gossip is signed under the network's wire domain (chain id, no contract), as
        # `kaisar node` and `kaisar client` do; votes, QCs and owner tokens use the
        # chain deployment's domain (Staking is the verifying contract).
        wire_domain = Domain(dev.deployment.chain_id)
        hosts = await stack.enter_async_context(
            start_network(len(idents), network=network, domain=wire_domain, identities=idents)
        )
        s = Stack(workdir, network, dev, rpc=rpc, user=user, wire_domain=wire_domain)
        s.checkers = hosts[:checkers]
        s.providers = hosts[checkers : checkers + providers]
        s.user_host = hosts[-1]
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        psettings = provider_settings or ProviderSettings(
            ad_interval=1.0,
            max_gpus=1,
            status_interval=1.0,
            chain_poll_interval=0.5,
            limits=Limits(memory_bytes=256 * 1024 * 1024, cpus=1.0, pids=128),
        )
        for i, host in enumerate(s.providers):
            runtime = (runtime_factory or ContainerRuntime)(host.address)
            stack.callback(runtime.close)
            svc = ProviderService(
                host, psettings, workdir / f"provider{i}.sqlite", chain=dev.chain, runtime=runtime
            )
            scope = trio.CancelScope()
            await nursery.start(_run_in_scope, svc.run, scope)
            s.provider_services.append(svc)
            s.provider_runtimes.append(runtime)
            s.provider_scopes.append(scope)
            # containers of this devnet go away with it
            stack.push_async_callback(runtime.cleanup_all)
        # Every provider proves to each of its committee members in turn (one exchange at
        # a time) and all of them share this machine's cores: allow a long busy-retry
        # window so the whole committee attests in the first epoch.
        csettings = checker_settings or CheckerSettings(
            popw_attempts=40, round_timeout=3.0, epoch_seconds=DEVNET_EPOCH_SECONDS
        )
        classes = devnet_class_table()
        for i, host in enumerate(s.checkers):
            checker = CheckerService(
                host, checker_ids[i], dev.chain, workdir / f"checker{i}", csettings,
                classes=classes,
            )
            await nursery.start(checker.run)
            s.checker_services.append(checker)
        if explorer:
            ex = await nursery.start(_run_explorer, s)
            s.explorer_url = ex.url
        s.info_path = _write_info(s)
        yield s


async def _run_in_scope(run: Any, scope: trio.CancelScope, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await run(task_status=task_status)


async def _run_explorer(s: Stack, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    from node.config import from_dict
    from node.explorer.service import run_explorer

    cfg = from_dict(
        {
            "node": {"network": s.network},
            "p2p": {"bootstrap": [h.addrs()[0] for h in s.checkers[:2] + s.providers[:1]], "gossip_heartbeat": 0.2, "dht": False},
            "chain": {"chain_id": s.dev.deployment.chain_id},
            "explorer": {"http_port": 0, "db": ":memory:"},
        }
    )
    await run_explorer(cfg, chain=s.dev.chain, task_status=task_status)


def _write_info(s: Stack) -> Path:
    """devnet.json: what `kaisar client --devnet FILE` needs to join this network."""
    assert s.user is not None
    dep_path = s.workdir / "deployment.json"
    s.dev.deployment.save(dep_path)
    key_path = s.workdir / "demo.key.json"
    if key_path.exists():
        key_path.unlink()
    save_keystore(s.user, key_path, DEVNET_KEY_PASSWORD, scrypt_n=2**10)
    info = {
        "rpc": s.rpc,
        "deployment": str(dep_path),
        "bootstrap": s.bootstrap(),
        "network": s.network,
        "demo_key": str(key_path),
        "demo_key_password_env": f"KAISAR_PASSWORD={DEVNET_KEY_PASSWORD}",
        "demo_address": s.user.address,
        "wire_chain_id": s.dev.deployment.chain_id,
        "explorer": s.explorer_url,
        "written": int(time.time()),
    }
    path = s.workdir / "devnet.json"
    path.write_text(json.dumps(info, indent=2))
    return path
