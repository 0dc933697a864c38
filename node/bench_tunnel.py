"""`kaisar bench tunnel`: a tunnel's throughput and round trip next to a direct TCP
connection and ``ssh -L``, same container, same run (method: docs/BENCHMARKS.md, Tunnel).

Processes, as a user would have them on one machine:

- a container from ``kaisar/bench-sink`` (scripts/build-images.sh; scripts/bench-server.c)
  with its port published on 127.0.0.1: first byte ``S`` = sink that answers the SHA-256
  of what arrived and its length, ``E`` = echo;
- a provider process: a real libp2p host running ``ProviderService``'s tunnel handler
  for one job record pointing at that container (no chain, no deploy);
- a client process per data path (``auto`` = direct data path, ``stream`` = the libp2p
  stream): the job owner's host, a local port, each connection one tunnel piped with
  ``node.p2p.pipe`` exactly like ``kaisar client connect``;
- a private ``sshd`` on a loopback port with fresh host and user keys, and ``ssh -N -L``
  to the container port (skipped, and said so, when openssh-server is not installed:
  scripts/install-sshd.sh);
- this process: blocking sockets, 1 MiB writes of a random payload, the hash checked;
  1000 x 100 B request/response round trips on one connection.

Each repetition measures every path in turn; figures are medians over repetitions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SINK_IMAGE = "kaisar/bench-sink:latest"
SINK_PORT = 7008
NETWORK = "kaisar-bench-tunnel"
CHAIN_ID = 31337
JOB_ID = 1
WRITE = 1 << 20
READY_TIMEOUT = 60.0


class BenchError(Exception):
    pass


# measurements (this process) --------------------------------------------------------


def throughput(port: int, payload: bytes, digest: str) -> dict[str, Any]:
    """Send ``payload`` to the sink through ``port``; MiB/s until the sink's answer."""
    view = memoryview(payload)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"S")
        t0 = time.perf_counter()
        for i in range(0, len(view), WRITE):
            s.sendall(view[i : i + WRITE])
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            answer += chunk
        elapsed = time.perf_counter() - t0
    parts = answer.decode(errors="replace").split()
    ok = len(parts) == 2 and parts[0] == digest and parts[1] == str(len(payload))
    if not ok:
        raise BenchError(f"integrity: sink answered {answer[:120]!r}, expected {digest} {len(payload)}")
    return {"mib_s": len(payload) / elapsed / (1 << 20), "s": elapsed}


def round_trips(port: int, n: int, size: int = 100) -> list[float]:
    """Microseconds per ``size``-byte request echoed back, ``n`` times on one connection."""
    msg = os.urandom(size)
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"E")
        for _ in range(n + 20):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = b""
            while len(got) < size:
                chunk = s.recv(size - len(got))
                if not chunk:
                    raise BenchError("echo connection ended early")
                got += chunk
            out.append((time.perf_counter_ns() - t0) / 1000)
            if got != msg:
                raise BenchError("echo answered other bytes")
    return out[20:]  # warm-up dropped


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def proc_cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds (user, system) of these processes and all their descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, tuple[float, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
    user, system, todo, seen = 0.0, 0.0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        u, k = cpu.get(p, (0.0, 0.0))
        user, system = user + u, system + k
        todo.extend(c for c, pp in parent.items() if pp == p)
    return user, system


def wait_port(port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the pieces -------------------------------------------------------------------------


def start_sink(docker_host: str) -> tuple[Any, int]:
    import docker
    import docker.errors

    client = docker.DockerClient(base_url=docker_host, timeout=30)
    try:
        client.images.get(SINK_IMAGE)
    except docker.errors.ImageNotFound:
        raise BenchError(f"{SINK_IMAGE} is missing: run scripts/build-images.sh (needs gcc, libssl-dev)") from None
    c = client.containers.run(
        SINK_IMAGE, detach=True, name=f"kaisar-bench-tunnel-{os.getpid()}",
        labels={"kaisar.bench": "tunnel"}, ports={f"{SINK_PORT}/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    c.reload()
    port = int(c.attrs["NetworkSettings"]["Ports"][f"{SINK_PORT}/tcp"][0]["HostPort"])
    return c, port


LOG_DIR = Path(tempfile.gettempdir()) / "kaisar-bench-tunnel"


def _child(args: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a child role; its log goes to LOG_DIR/<role>-<data path>.log."""
    LOG_DIR.mkdir(exist_ok=True)
    name = "-".join([args[0], *(a for a in args[1:] if a in ("auto", "stream", "chacha20poly1305"))])
    with open(LOG_DIR / f"{name}.log", "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.bench_tunnel", *args],
            stdout=subprocess.PIPE, stderr=logf, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise BenchError(f"bench child {args[0]} exited ({proc.returncode}) before it was ready")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Ssh:
    """A private sshd on a loopback port (own host and user keys) and ``ssh -N -L``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dir = Path(tempfile.mkdtemp(prefix="kaisar-bench-ssh-"))
        self.sshd: subprocess.Popen | None = None
        self.ssh: subprocess.Popen | None = None
        self.local_port = 0
        self.version = ""

    @staticmethod
    def available() -> str | None:
        """None if usable, else why not."""
        if not Path("/usr/sbin/sshd").exists():
            return "openssh-server not installed (scripts/install-sshd.sh installs it without starting it)"
        if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
            return "ssh client missing (apt-get install openssh-client)"
        return None

    def start(self) -> None:
        d = self.dir
        for name in ("host", "user"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        shutil.copy(d / "user.pub", d / "authorized_keys")
        os.chmod(d, 0o700)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        port = free_port()
        config = d / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nAllowTcpForwarding yes\nPermitRootLogin prohibit-password\n"
        )
        self.sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(port, 10)
        self.local_port = free_port()
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.ssh = subprocess.Popen(
            [
                "ssh", "-N", "-p", str(port), "-i", str(d / "user"), "-F", "/dev/null",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "ExitOnForwardFailure=yes",
                "-L", f"127.0.0.1:{self.local_port}:127.0.0.1:{self.target_port}", f"{user}@127.0.0.1",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.local_port, 15)
        self.version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()

    def pids(self) -> list[int]:
        return [p.pid for p in (self.ssh, self.sshd) if p is not None]

    def close(self) -> None:
        stop(self.ssh)
        stop(self.sshd)
        shutil.rmtree(self.dir, ignore_errors=True)


# the run ----------------------------------------------------------------------------


def run(mib: int = 256, rtts: int = 1000, repeat: int = 3, libp2p_mib: int = 64, ssh: bool = True) -> dict:
    from node.identity import Identity
    from node.roles.provider.engine import ensure_engine

    docker_host = ensure_engine()
    payload = os.urandom(mib << 20)
    digest = hashlib.sha256(payload).hexdigest()
    small = payload[: libp2p_mib << 20]
    small_digest = hashlib.sha256(small).hexdigest()
    owner = Identity.generate()
    load_before = os.getloadavg()
    container = provider = direct_client = stream_client = chacha_client = None
    sshrun: Ssh | None = None
    ssh_skipped = Ssh.available() if ssh else "disabled (--no-ssh)"
    try:
        container, sink_port = start_sink(docker_host)
        wait_port(sink_port)
        provider, pinfo = _child(["provider", "--host-port", str(sink_port), "--owner", owner.address])
        common = ["client", "--provider", pinfo["addr"], "--owner-key", owner.hex()]
        direct_client, dinfo = _child([*common, "--data-path", "auto"])
        chacha_client, cinfo = _child([*common, "--ciphers", "chacha20poly1305", "--data-path", "auto"])
        stream_client, sinfo = _child([*common, "--data-path", "stream"])
        if ssh_skipped is None:
            sshrun = Ssh(sink_port)
            try:
                sshrun.start()
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                ssh_skipped = f"ssh -L could not start: {exc}"
                sshrun.close()
                sshrun = None
        paths: dict[str, tuple[int, list[int], bytes, str]] = {
            "direct": (sink_port, [], payload, digest),
            "tunnel": (dinfo["port"], [provider.pid, direct_client.pid], payload, digest),
            "tunnel_chacha": (cinfo["port"], [provider.pid, chacha_client.pid], payload, digest),
            "tunnel_libp2p": (sinfo["port"], [provider.pid, stream_client.pid], small, small_digest),
        }
        if sshrun is not None:
            paths["ssh"] = (sshrun.local_port, sshrun.pids(), payload, digest)
        runs: dict[str, list[dict]] = {k: [] for k in paths}
        for _ in range(repeat):
            for name, (port, pids, data, dig) in paths.items():
                u0, k0 = proc_cpu(pids)
                r = throughput(port, data, dig)
                u1, k1 = proc_cpu(pids)
                gib = len(data) / (1 << 30)
                r["cpu_s_per_gib"] = (u1 - u0 + k1 - k0) / gib
                r["cpu_user_s_per_gib"], r["cpu_sys_s_per_gib"] = (u1 - u0) / gib, (k1 - k0) / gib
                lat = round_trips(port, rtts)
                r["rtt_p50_us"], r["rtt_p95_us"] = statistics.median(lat), pct(lat, 0.95)
                runs[name].append(r)
        paths_seen = dinfo.get("paths", [])
    finally:
        if sshrun is not None:
            sshrun.close()
        for p in (stream_client, chacha_client, direct_client, provider):
            stop(p)
        if container is not None:
            container.remove(force=True)
    return summarize(runs, mib, libp2p_mib, rtts, repeat, load_before, ssh_skipped, sshrun, paths_seen)


def summarize(runs, mib, libp2p_mib, rtts, repeat, load_before, ssh_skipped, sshrun, paths_seen) -> dict:
    def med(name: str, key: str, nd: int = 1) -> float | None:
        xs = [r[key] for r in runs.get(name, [])]
        return round(statistics.median(xs), nd) if xs else None

    out: dict[str, Any] = {
        "bench": "tunnel",
        "mib": mib,
        "round_trips": rtts,
        "repeat": repeat,
        "tunnel_mib_s": med("tunnel", "mib_s"),
        "direct_mib_s": med("direct", "mib_s"),
        "ssh_mib_s": med("ssh", "mib_s"),
        "tunnel_chacha_mib_s": med("tunnel_chacha", "mib_s"),
        "tunnel_libp2p_mib_s": med("tunnel_libp2p", "mib_s"),
        "tunnel_rtt_p50_us": med("tunnel", "rtt_p50_us"),
        "tunnel_rtt_p95_us": med("tunnel", "rtt_p95_us"),
        "direct_rtt_p50_us": med("direct", "rtt_p50_us"),
        "ssh_rtt_p50_us": med("ssh", "rtt_p50_us"),
        "ssh_rtt_p95_us": med("ssh", "rtt_p95_us"),
        "tunnel_chacha_rtt_p50_us": med("tunnel_chacha", "rtt_p50_us"),
        "tunnel_libp2p_rtt_p50_us": med("tunnel_libp2p", "rtt_p50_us"),
        "tunnel_cpu_s_per_gib": med("tunnel", "cpu_s_per_gib", 2),
        "tunnel_cpu_user_sys_s_per_gib": [
            med("tunnel", "cpu_user_s_per_gib", 2), med("tunnel", "cpu_sys_s_per_gib", 2)
        ],
        "ssh_cpu_user_sys_s_per_gib": [med("ssh", "cpu_user_s_per_gib", 2), med("ssh", "cpu_sys_s_per_gib", 2)],
        "ssh_cpu_s_per_gib": med("ssh", "cpu_s_per_gib", 2),
        "tunnel_chacha_cpu_s_per_gib": med("tunnel_chacha", "cpu_s_per_gib", 2),
        "tunnel_libp2p_cpu_s_per_gib": med("tunnel_libp2p", "cpu_s_per_gib", 2),
        "integrity": "sha256 of what the sink received matched, every run",
        "tunnel_data_path": paths_seen,
        "libp2p_mib": libp2p_mib,
    }
    if out["ssh_mib_s"]:
        out["ratio_vs_ssh"] = round(out["tunnel_mib_s"] / out["ssh_mib_s"], 3)
        out["rtt_ratio_vs_ssh"] = round(out["tunnel_rtt_p50_us"] / out["ssh_rtt_p50_us"], 2)
        out["goal_throughput_met"] = out["ratio_vs_ssh"] >= 0.9
        out["goal_rtt_met"] = out["rtt_ratio_vs_ssh"] <= 3.0
        out["ssh"] = sshrun.version if sshrun else ""
        out["ssh_cipher"] = "default (chacha20-poly1305@openssh.com)"
    else:
        out["ratio_vs_ssh"] = None
        out["ssh_skipped"] = ssh_skipped
    out["runs"] = {k: [{kk: round(vv, 2) for kk, vv in r.items()} for r in v] for k, v in runs.items()}
    out["loadavg_before"] = [round(x, 2) for x in load_before]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


# child processes --------------------------------------------------------------------


def _domain():
    from node.eip712 import Domain

    return Domain(CHAIN_ID)


async def provider_main(host_port: int, owner: str) -> None:
    import trio

    from node.identity import Identity
    from node.p2p.host import HostOptions, open_host
    from node.popw.inventory import Inventory
    from node.roles.provider import messages as msg
    from node.roles.provider.service import ProviderService, ProviderSettings
    from node.roles.provider.state import JobRecord

    settings = ProviderSettings(ad_interval=3600, status_interval=3600, max_tunnels_per_job=64)
    opts = HostOptions(dht=False)
    with tempfile.TemporaryDirectory(prefix="kaisar-bench-provider-") as tmp:
        async with open_host(Identity.generate(), network=NETWORK, domain=_domain(), options=opts) as host:
            svc = ProviderService(
                host, settings, Path(tmp) / "p.sqlite", inventory=Inventory(cpu="bench", cpu_count=1),
                prover=object(),
            )  # fmt: skip
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.run)
                now = time.time()
                svc.state.put_job(JobRecord(
                    JOB_ID, 0, b"\0" * 32, (), owner, SINK_IMAGE, SINK_PORT, (), msg.RUNNING, "",
                    "bench", host_port, now, now + 86400,
                ))  # fmt: skip
                while not svc.data_path.listening:
                    await trio.sleep(0.01)
                print(json.dumps({"addr": host.addrs()[0], "data_port": svc.data_path.port}), flush=True)
                await trio.sleep_forever()


async def client_main(provider_addr: str, owner_key: str, data_path: str, ciphers: tuple[str, ...]) -> None:
    import trio
    from libp2p.peer.id import ID

    from node.client.forward import pipe_local
    from node.identity import Identity
    from node.p2p.host import HostOptions, open_host
    from node.roles.provider.tunnel import open_tunnel

    owner = Identity.from_hex(owner_key)
    peer = ID.from_base58(provider_addr.rsplit("/p2p/", 1)[1])
    paths: list[str] = []
    async with open_host(owner, network=NETWORK, domain=_domain(), options=HostOptions(dht=False)) as host:
        await host.connect(provider_addr)

        async def handle(tcp: trio.SocketStream) -> None:
            try:
                async with open_tunnel(host, peer, owner, _domain(), JOB_ID, data_path=data_path, ciphers=ciphers) as t:
                    paths.append(t.path)
                    await pipe_local(tcp, t)
            finally:
                with trio.CancelScope(shield=True):
                    await tcp.aclose()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        # probe once so the parent learns which data path this client gets
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            async with open_tunnel(host, peer, owner, _domain(), JOB_ID, data_path=data_path, ciphers=ciphers) as t:
                probe = t.path
            print(json.dumps({"port": port, "paths": [probe]}), flush=True)
            await trio.sleep_forever()


def child_main(argv: list[str]) -> None:
    import trio

    p = argparse.ArgumentParser(prog="node.bench_tunnel")
    sub = p.add_subparsers(dest="role", required=True)
    pp = sub.add_parser("provider")
    pp.add_argument("--host-port", type=int, required=True)
    pp.add_argument("--owner", required=True)
    cp = sub.add_parser("client")
    cp.add_argument("--provider", required=True)
    cp.add_argument("--owner-key", required=True)
    cp.add_argument("--ciphers", default="aes256gcm,chacha20poly1305")
    cp.add_argument("--data-path", choices=("auto", "stream"), default="auto")
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    try:
        if a.role == "provider":
            trio.run(provider_main, a.host_port, a.owner)
        else:
            trio.run(client_main, a.provider, a.owner_key, a.data_path, tuple(a.ciphers.split(",")))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    child_main(sys.argv[1:])
