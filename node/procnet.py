"""A Kaisar network of separate OS processes, for restart tests and the churn soak.

``open_procnet(workdir, checkers=N, providers=M)`` starts (or reuses, ``rpc=URL``) an
anvil chain, deploys the contracts, registers and stakes N genesis checkers, funds the
providers and a user key, writes one TOML config + keystore + data dir per node, and
runs every node as its own ``kaisar node --role checker|provider --config F`` process
(and ``kaisar explorer``). Each process has its own SQLite state in its data dir and
its own log file (appended across restarts), so ``kill -9`` and a restart are real.

Faults, per node (``net.node("provider0")``):

- ``kill9()`` / ``start()``: SIGKILL and a restart on the same config and data dir;
- ``pause()`` / ``resume()``: SIGSTOP / SIGCONT (a node frozen past timeouts);
- ``cut()`` / ``restore()``: drop every packet the node's process sends. Each node runs
  in its own cgroup (v2) and an ``iptables -m cgroup --path`` OUTPUT rule drops its
  traffic, so its TCP connections stall both ways (ACKs are lost) without touching
  anyone else; the Docker socket (unix) is unaffected. Needs root, a cgroup2 mount and
  iptables; where missing, ``cut`` falls back to SIGSTOP (``net.netcut`` says which).

``net.devnet_json`` is the file `kaisar client --devnet F` reads (rpc, deployment,
bootstrap, network, the user key), ``net.client()`` a ``node.client.api.Client`` for
the user in this process. Keys are throwaway (cheap scrypt, fixed password).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.identity import Identity, save_keystore

log = logging.getLogger("kaisar.procnet")

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "kaisar-procnet"  # throwaway keys of a test network only
ETHER = 10**18
CHECKER_STAKE = 10 * ETHER
USER_FUNDS = 1000 * ETHER
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


# Settings that make a one-machine network fast (tests, soak); override per role.
FAST_CHECKER = {
    "epoch_seconds": 20.0,
    "round_timeout": 2.0,
    "status_timeout": 6.0,
    "submit_backoff": 1.0,
    "chain_poll": 0.3,
    "deploy_timeout": 30.0,
    "popw_attempts": 40,
    # small challenges and a wide allowance: a dozen processes share two cores here
    "popw_target_seconds": 0.15,
    "popw_allowance_seconds": 8.0,
}
FAST_PROVIDER = {
    "ad_interval": 1.0,
    "status_interval": 1.0,
    "chain_poll_interval": 0.5,
    "memory_mb": 128,
    "cpus": 0.5,
    "pids": 64,
    "log_retention": 30.0,
    "allow_pull": False,
}


class NetCut:
    """Per-process packet drop through a cgroup v2 path and an iptables OUTPUT rule."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.available = self._probe()

    @staticmethod
    def _probe() -> bool:
        if os.geteuid() != 0 or shutil.which("iptables") is None:
            return False
        if not (CGROUP_ROOT / "cgroup.procs").exists():
            return False
        try:
            probe = CGROUP_ROOT / f"kaisar-probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError:
            return False
        return True

    def path(self, name: str) -> str:
        return f"kaisar-{self.tag}-{name}"

    def join(self, name: str, pid: int) -> None:
        d = CGROUP_ROOT / self.path(name)
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(str(pid))

    def _rule(self, op: str, name: str) -> bool:
        cmd = ["iptables", op, "OUTPUT", "-m", "cgroup", "--path", self.path(name), "-j", "DROP"]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def cut(self, name: str) -> None:
        if not self._rule("-A", name):
            raise RuntimeError(f"iptables refused the drop rule for {name}")

    def restore(self, name: str) -> None:
        while self._rule("-D", name):  # every copy of the rule
            pass

    def remove(self, name: str) -> None:
        self.restore(name)
        d = CGROUP_ROOT / self.path(name)
        try:
            for pid in (d / "cgroup.procs").read_text().split():  # leftovers go to the root
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            d.rmdir()
        except OSError:
            pass


@dataclass
class NodeProc:
    """One node process: its config, data dir and log survive restarts."""

    name: str
    role: str  # checker | provider | explorer
    config: Path
    log_path: Path
    data_dir: Path
    identity: Identity | None
    port: int
    env: dict[str, str]
    netcut: NetCut | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0
    paused: bool = False
    is_cut: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        assert self.identity is not None
        return self.identity.address

    @property
    def multiaddr(self) -> str:
        assert self.identity is not None
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.identity.peer_id.to_base58()}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        base = [sys.executable, str(ROOT / "cli.py"), "--log-level", "INFO"]
        if self.role == "explorer":
            return base + ["explorer", "--config", str(self.config)]
        return base + ["node", "--role", self.role, "--config", str(self.config)]

    def start(self) -> int:
        """Start (or restart) the process; returns the log offset where this run begins."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as f:
            f.write(f"--- procnet start {self.starts} of {self.name} at {time.time():.3f}\n")
            offset = f.tell()
            self.proc = subprocess.Popen(
                self.argv(),
                env={**self.env, **self.extra_env},
                stdout=subprocess.DEVNULL,
                stderr=f,
                start_new_session=True,
            )
        self.starts += 1
        self.paused = False
        if self.netcut is not None and self.netcut.available:
            try:
                self.netcut.join(self.name, self.proc.pid)
            except OSError as exc:
                log.warning("event=cgroup_join_failed node=%s err=%s", self.name, exc)
        return offset

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.paused = False

    def terminate(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def pause(self) -> None:
        if self.alive and not self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def cut(self) -> str:
        """Drop this node's network; returns how ("netcut" or "pause")."""
        if self.netcut is not None and self.netcut.available:
            self.netcut.cut(self.name)
            self.is_cut = True
            return "netcut"
        self.pause()
        return "pause"

    def restore(self) -> None:
        if self.is_cut and self.netcut is not None:
            self.netcut.restore(self.name)
            self.is_cut = False
        else:
            self.resume()

    def log_text(self, offset: int = 0) -> str:
        try:
            with self.log_path.open() as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return ""

    async def wait_line(self, *parts: str, offset: int = 0, timeout: float = START_TIMEOUT) -> str:
        """Wait for a log line (after ``offset``) holding every one of ``parts``; return it."""
        with trio.move_on_after(timeout):
            while True:
                for line in self.log_text(offset).splitlines():
                    if all(p in line for p in parts):
                        return line
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {parts}")
                await trio.sleep(0.2)
        raise TimeoutError(f"no line with {parts} in {self.name}'s log after {timeout} s:\n"
                           + self.log_text(offset)[-3000:])  # fmt: skip

    async def wait_log(self, needle: str, *, offset: int = 0, timeout: float = START_TIMEOUT) -> str:
        """Wait until ``needle`` appears in this node's log after ``offset``."""
        with trio.move_on_after(timeout):
            while True:
                text = self.log_text(offset)
                if needle in text:
                    return text
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}) before {needle!r}:\n"
                        + text[-3000:]
                    )
                await trio.sleep(0.1)
        raise TimeoutError(f"{needle!r} not in {self.name}'s log after {timeout} s:\n"
                           + self.log_text(offset)[-3000:])  # fmt: skip


STARTED = {
    "checker": "event=checker_started",
    "provider": "event=provider_started",
    "explorer": "event=explorer_started",
}


@dataclass
class ProcNet:
    workdir: Path
    network: str
    rpc: str
    dev: Any  # node.chain.genesis.DevChain (this process's view of the chain)
    user: Identity
    checkers: list[NodeProc]
    providers: list[NodeProc]
    explorer: NodeProc | None
    devnet_json: Path
    netcut: NetCut

    @property
    def nodes(self) -> list[NodeProc]:
        return self.checkers + self.providers + ([self.explorer] if self.explorer else [])

    def node(self, name: str) -> NodeProc:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def chain(self) -> Any:
        return self.dev.chain

    @property
    def deployment_path(self) -> Path:
        return self.workdir / "deployment.json"

    def bootstrap(self) -> list[str]:
        return [c.multiaddr for c in self.checkers]

    async def wait_started(self, node: NodeProc, offset: int = 0, timeout: float = START_TIMEOUT) -> None:
        await node.wait_log(STARTED[node.role], offset=offset, timeout=timeout)

    async def restart(self, node: NodeProc, *, wait: bool = True) -> None:
        node.kill9()
        offset = node.start()
        if wait:
            await self.wait_started(node, offset)

    def explorer_url(self) -> str | None:
        if self.explorer is None:
            return None
        for line in reversed(self.explorer.log_text().splitlines()):
            if "event=explorer_started url=" in line:
                return line.split("url=", 1)[1].split()[0]
        return None

    async def wait_standing(self, count: int, timeout: float = 180.0) -> None:
        """Until ``count`` providers hold a PoPW PASS certificate (seen in a checker's log)."""
        from node.errors import UserError

        with trio.move_on_after(timeout):
            while True:
                text = "".join(c.log_text() for c in self.checkers)
                passed = [
                    p for p in self.providers
                    if any("event=popw_qc " in line and f"provider={p.address} verdict=1" in line
                           for line in text.splitlines())
                ]  # fmt: skip
                if len(passed) >= count:
                    return
                await trio.sleep(0.5)
        raise UserError(f"fewer than {count} providers passed PoPW in {timeout:g} s")

    @asynccontextmanager
    async def client(self, key: Identity | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """A light client in this process (own host, same chain), the user's by default.

        A host closed in a process that lives on leaves its TCP connections open (the
        peers keep the old pubsub stream), so a later client process with the *same*
        key hears no gossip: pass another ``key`` for a throwaway observer.
        """
        from node.client.api import Client

        async with Client.open(
            key=key or self.user, rpc=self.rpc, deployment=self.deployment_path,
            bootstrap=self.bootstrap(), network=self.network, **kwargs,
        ) as c:  # fmt: skip
            yield c

    async def escrow_events(self, watcher: Any = None) -> list[Any]:
        """Every Escrow event so far (or, with a ``watcher`` from before, the new ones)."""
        from node.chain.watcher import EventWatcher

        w = watcher or EventWatcher(
            self.chain.client, [self.chain.escrow], from_block=self.dev.deployment.block
        )
        out: list[Any] = []
        while True:
            out += await w.poll()
            if w.caught_up:
                return out

    def client_argv(self, *args: str) -> list[str]:
        """`kaisar client ARGS --devnet F` as a separate process (env: ``self.env``)."""
        return [sys.executable, str(ROOT / "cli.py"), "client", *args, "--devnet", str(self.devnet_json)]


def _anvil_binary() -> str | None:
    for c in (ROOT / ".tools" / "node_modules" / ".bin" / "anvil", shutil.which("anvil")):
        if c and Path(c).exists():
            return str(c)
    return None


@asynccontextmanager
async def open_procnet(
    workdir: Path,
    *,
    checkers: int = 1,
    providers: int = 1,
    explorer: bool = False,
    network: str = "procnet",
    rpc: str | None = None,
    checker_opts: dict[str, Any] | None = None,
    provider_opts: dict[str, Any] | None = None,
    docker_host: str | None = None,
    checker_env: Sequence[dict[str, str]] = (),
    deploy_params: Any = None,
    start: bool = True,
) -> AsyncIterator[ProcNet]:
    """Chain + contracts + genesis checkers + node processes; all stop on exit.

    ``checker_env[i]`` adds environment variables to checker i (fault-injection hooks).
    With ``start=False`` the nodes are configured but not started (``node.start()``).
    """
    from node.chain.client import ChainClient
    from node.chain.genesis import GenesisChecker, bootstrap
    from node.devnet_stack import ANVIL_DEV_KEY, _anvil

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    netcut = NetCut(tag)
    async with AsyncExitStack() as stack:
        if rpc is None:
            if _anvil_binary() is None:
                from node.errors import UserError

                raise UserError("anvil not installed: run scripts/install-anvil.sh")
            rpc = await stack.enter_async_context(_anvil())
        client = await trio.to_thread.run_sync(ChainClient.connect, rpc)
        faucet = Identity.from_hex(ANVIL_DEV_KEY)
        checker_ids = [Identity.generate() for _ in range(checkers)]
        provider_ids = [Identity.generate() for _ in range(providers)]
        user = Identity.generate()
        dev = await bootstrap(
            client, faucet, [GenesisChecker(k, k, CHECKER_STAKE) for k in checker_ids],
            params=deploy_params,
        )
        for ident in provider_ids:
            await dev.fund(ident.address, 10 * ETHER)
        await dev.fund(user.address, USER_FUNDS)
        dep_path = workdir / "deployment.json"
        dev.deployment.save(dep_path)
        chain_id = dev.deployment.chain_id

        env = {**os.environ, "KAISAR_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"}
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        ports = {f"checker{i}": free_port() for i in range(checkers)}
        ports.update({f"provider{i}": free_port() for i in range(providers)})
        boot = [
            f"/ip4/127.0.0.1/tcp/{ports[f'checker{i}']}/p2p/{k.peer_id.to_base58()}"
            for i, k in enumerate(checker_ids)
        ]

        def make(name: str, role: str, ident: Identity | None, port: int, extra: dict[str, Any]) -> NodeProc:
            d = workdir / name
            d.mkdir(exist_ok=True)
            sections: dict[str, dict[str, Any]] = {
                "node": {**({"role": role} if role != "explorer" else {}), "network": network,
                         "data_dir": "data"},
                "p2p": {"listen": [f"/ip4/127.0.0.1/tcp/{port}"],
                        "bootstrap": [b for b in boot if f"/tcp/{port}/" not in b],
                        "heartbeat_interval": 1.0, "gossip_heartbeat": 0.2, "dht": False},
                "chain": {"rpc": rpc, "chain_id": chain_id, "deployment": str(dep_path)},
            }  # fmt: skip
            if ident is not None:
                save_keystore(ident, d / "key.json", PASSWORD, scrypt_n=2**4)
                sections["node"]["key_file"] = "key.json"
            sections.update(extra)
            cfg = d / f"{name}.toml"
            cfg.write_text(to_toml(sections))
            return NodeProc(name, role, cfg, d / "node.log", d / "data", ident, port, env, netcut)

        copts = {**FAST_CHECKER, **(checker_opts or {})}
        popts = {**FAST_PROVIDER, **(provider_opts or {})}
        if docker_host:
            popts.setdefault("docker_host", docker_host)
        cnodes = [
            make(f"checker{i}", "checker", k, ports[f"checker{i}"], {"checker": copts})
            for i, k in enumerate(checker_ids)
        ]
        for i, extra_env in enumerate(checker_env):
            cnodes[i].extra_env.update(extra_env)
        pnodes = [
            make(f"provider{i}", "provider", k, ports[f"provider{i}"], {"provider": popts})
            for i, k in enumerate(provider_ids)
        ]
        enode = None
        if explorer:
            enode = make(
                "explorer", "explorer", None, free_port(),
                {"explorer": {"http_port": free_port(), "db": "explorer.sqlite", "commit_interval": 0.25}},
            )  # fmt: skip
        user_key = workdir / "user.key.json"
        save_keystore(user, user_key, PASSWORD, scrypt_n=2**4)
        info = {
            "rpc": rpc, "deployment": str(dep_path), "bootstrap": boot, "network": network,
            "demo_key": str(user_key), "demo_address": user.address, "wire_chain_id": chain_id,
        }  # fmt: skip
        devnet_json = workdir / "devnet.json"
        devnet_json.write_text(json.dumps(info, indent=2))
        net = ProcNet(workdir, network, rpc, dev, user, cnodes, pnodes, enode, devnet_json, netcut)
        stack.push_async_callback(_shutdown, net, docker_host)
        if start:
            offsets = [(n, n.start()) for n in cnodes]
            for n, off in offsets:
                await net.wait_started(n, off)
            offsets = [(n, n.start()) for n in pnodes + ([enode] if enode else [])]
            for n, off in offsets:
                await net.wait_started(n, off)
        yield net


async def _shutdown(net: ProcNet, docker_host: str | None) -> None:
    for n in net.nodes:
        if n.is_cut:
            n.restore()
        n.resume()
        n.terminate(timeout=10)
        if n.netcut is not None and n.netcut.available:
            n.netcut.remove(n.name)
    # containers of killed providers stay on the engine: remove what this network made
    try:
        from node.roles.provider.runtime import ContainerRuntime
    except ImportError:  # pragma: no cover
        return
    for p in net.providers:
        try:
            runtime = ContainerRuntime(p.address, docker_host=docker_host)
        except Exception as exc:  # no engine: nothing was started either
            log.info("event=cleanup_skipped node=%s err=%s", p.name, exc)
            continue
        try:
            await runtime.cleanup_all()
        finally:
            runtime.close()


def http_get(port: int, path: str, timeout: float = 12.0) -> bytes:
    """HTTP/1.0 GET on 127.0.0.1:port, retried until a non-empty answer or ``timeout``
    seconds (then b""): a tunnel's local port may refuse or close while a job moves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                answer = b"".join(chunks)
                if answer:
                    return answer
        except OSError:
            pass
        if time.monotonic() > deadline:
            return b""
        time.sleep(0.5)
