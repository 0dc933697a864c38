"""`kaisar bench hostile`: one provider under attack by a hostile peer, honest traffic measured.

World: three real libp2p hosts on 127.0.0.1 (``start_network``): the **provider** (the
real ``ProviderService`` with its five stream handlers; no chain and no container
engine, one job owned by the honest peer marked running with its port on a local TCP
echo server), the **attacker** (its own key) and the **honest** peer (the job's owner).

Phases, ``seconds`` each; honest traffic runs in every one of them (status requests
with an owner token, tunnel echo round trips, signed heartbeats gossiped to the
provider, which subscribes to ``status/1`` as a checker would):

- ``baseline``: no attack.
- ``oversize``: streams on every protocol announcing a 4 GiB frame, then 64 KiB of junk.
- ``slowloris``: streams on every protocol that send one byte per second, or nothing.
- ``flood``: signed, valid heartbeats at the attacker's full rate, plus stale copies.
- ``multiaddr``: heartbeats and ads with malformed multiaddrs; the honest peer dials
  every address it hears, as clients and checkers do.

Reported per phase: honest requests ok/failed and their median/p95 latency, gossip
latency, what the attacker sent and what the provider refused, and the process's
traced Python memory (``tracemalloc``) before and after. The test
(tests/test_hostile_peers.py) checks the qualitative result: the provider stays up,
honest traffic succeeds in every phase, memory growth is bounded.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from node import metrics, wire
from node.benchstats import percentile
from node.devnet import FAST_GOSSIP, start_network, wait_for_mesh
from node.identity import Identity
from node.p2p.frames import LEN, FrameError
from node.p2p.host import KaisarHost, P2PError
from node.p2p.limits import GossipGate, GossipLimits, StreamGate, StreamLimits

log = logging.getLogger("kaisar.bench.hostile")

PHASES = ("baseline", "oversize", "slowloris", "flood", "multiaddr")
BAD_ADDRS = [
    "/ip4/999.1.1.1/tcp/1", "/ip4/1.2.3.4/tcp/99999", "/garbage/x", "/" * 200,
    "/ip4/127.0.0.1/tcp/1/p2p/notapeerid", "/dns4/" + "a" * 240, "/ip6/zz::1/tcp/1",
    "/ip4/127.0.0.1/tcp/9/p2p/16Uiu2HAm" + "1" * 40,
]  # fmt: skip


@dataclass
class Phase:
    name: str
    honest_ok: int = 0
    honest_failed: int = 0
    status_s: list[float] = field(default_factory=list)
    tunnel_s: list[float] = field(default_factory=list)
    gossip_s: list[float] = field(default_factory=list)
    attack_sent: int = 0
    dial_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # honest failures by kind
    hit: trio.Event = field(default_factory=trio.Event)  # the attack has started to land
    hit_after: int = 1  # attack units sent before the attack counts as landed

    def sent(self, n: int = 1) -> None:
        self.attack_sent += n
        if self.attack_sent >= self.hit_after:
            self.hit.set()

    def summary(self) -> dict[str, Any]:
        def ms(xs: list[float], q: float) -> float | None:
            return round(percentile(xs, q) * 1000, 1) if xs else None

        return {
            "honest_ok": self.honest_ok,
            "honest_failed": self.honest_failed,
            "honest_errors": dict(self.errors),
            "status_p50_ms": ms(self.status_s, 0.5),
            "status_p95_ms": ms(self.status_s, 0.95),
            "tunnel_p50_ms": ms(self.tunnel_s, 0.5),
            "gossip_p50_ms": ms(self.gossip_s, 0.5),
            "gossip_heard": len(self.gossip_s),
            "attack_sent": self.attack_sent,
            "dial_errors_handled": self.dial_errors,
        }


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


# the attacks ------------------------------------------------------------------------


async def _raw_stream(attacker: KaisarHost, peer: Any, protocol: str, timeout: float = 5.0) -> Any | None:
    try:
        with trio.fail_after(timeout):
            return await attacker.host.new_stream(peer, [TProtocol(protocol)])
    except Exception:  # refused, reset, or timed out: the attack goes on
        return None


async def attack_oversize(attacker: KaisarHost, peer: Any, protocols: list[str], stop: trio.Event, ph: Phase) -> None:
    junk = os.urandom(64 * 1024)
    while not stop.is_set():
        for proto in protocols:
            s = await _raw_stream(attacker, peer, proto)
            if s is None:
                continue
            try:
                await s.write(LEN.pack(0xFFFFFFFF) + junk)
                ph.sent()
            except Exception:
                pass
            finally:
                try:
                    await s.reset()
                except Exception:
                    pass
        await trio.sleep(0.01)


async def attack_slowloris(attacker: KaisarHost, peer: Any, protocols: list[str], stop: trio.Event, ph: Phase, streams: int) -> None:
    """``streams`` streams held open, each sending one byte per second (half of them
    nothing at all); a stream the provider drops is reopened."""

    async def drip(proto: str, silent: bool) -> None:
        while not stop.is_set():
            s = await _raw_stream(attacker, peer, proto, timeout=15)
            if s is None:
                await trio.sleep(0.5)
                continue
            ph.sent()
            try:
                while not stop.is_set():
                    if not silent:
                        await s.write(b"\x00")
                    with trio.move_on_after(1.0):
                        await stop.wait()
            except Exception:  # the provider gave up on us: open another one
                pass
            finally:
                try:
                    await s.reset()
                except Exception:
                    pass

    ph.hit_after = max(1, streams // 2)  # landed once half the streams are open
    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(drip, protocols[i % len(protocols)], i % 2 == 0)
            await trio.sleep(0.01)
        await stop.wait()
        nursery.cancel_scope.cancel()


async def attack_flood(attacker: KaisarHost, stop: trio.Event, ph: Phase) -> None:
    stale = attacker.sign("Heartbeat", {"role": "provider", "peer": attacker.peer_id.to_base58(), "addrs": []})
    await attacker.publish("status/1", stale)
    while not stop.is_set():
        env = attacker.sign(
            "Heartbeat", {"role": "provider", "peer": attacker.peer_id.to_base58(), "addrs": attacker.addrs()}
        )
        try:
            await attacker.publish("status/1", env)
            await attacker.pubsub.publish(attacker.topic("status/1"), stale.to_bytes())  # a replay
            ph.sent(2)
        except Exception:
            pass
        await trio.sleep(0)


async def attack_multiaddr(attacker: KaisarHost, stop: trio.Event, ph: Phase) -> None:
    while not stop.is_set():
        # Its own peer id (an ad naming another peer is rejected outright:
        # tests/test_hostile_limits.py::test_a_node_describes_only_itself), garbage addresses.
        me = attacker.peer_id.to_base58()
        hb = attacker.sign("Heartbeat", {"role": "provider", "peer": me, "addrs": BAD_ADDRS})
        ad = attacker.sign(
            "ProviderAd",
            {
                "peer": me, "addrs": BAD_ADDRS, "gpu_class": "cpu",
                "price_per_gpu_hour_wei": 1, "gpus_total": 1, "gpus_free": 1, "accepting": True,
                "inventory": {"gpus": []},
            },
        )  # fmt: skip
        for topic, env in (("status/1", hb), ("ads/1", ad)):
            try:
                await attacker.publish(topic, env)
                ph.sent()
            except Exception:
                pass
        await trio.sleep(0.05)


async def run_attacker(phase: str, target: str, seconds: float, slowloris_streams: int = 100) -> dict[str, Any]:
    """The attacker as its own OS process (``python -m node.bench_hostile``): its CPU is
    not the provider's, so the honest latencies measure the provider under attack."""
    from node.devnet import DEVNET_DOMAIN
    from node.p2p.host import HostOptions, open_host
    from node.roles.provider.service import (
        DEPLOY_PROTOCOL,
        LOGS_PROTOCOL,
        POPW_PROTOCOL,
        STATUS_PROTOCOL,
        TUNNEL_PROTOCOL,
    )  # fmt: skip

    protocols = [POPW_PROTOCOL, DEPLOY_PROTOCOL, TUNNEL_PROTOCOL, LOGS_PROTOCOL, STATUS_PROTOCOL]
    ph = Phase(phase)
    opts = HostOptions(dht=False, gossip=FAST_GOSSIP)
    async with open_host(Identity.generate(), network="devnet", domain=DEVNET_DOMAIN, options=opts) as attacker:
        peer = await attacker.connect(target)
        for suffix in ("status/1", "ads/1"):
            await attacker.subscribe(suffix, _ignore)
        with trio.move_on_after(10):  # gossip attacks need the provider in our mesh
            while peer not in attacker.gossipsub.mesh.get(attacker.topic("status/1"), set()):
                await trio.sleep(0.05)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if phase == "oversize":
                nursery.start_soon(attack_oversize, attacker, peer, protocols, stop, ph)
            elif phase == "slowloris":
                nursery.start_soon(attack_slowloris, attacker, peer, protocols, stop, ph, slowloris_streams)
            elif phase == "flood":
                nursery.start_soon(attack_flood, attacker, stop, ph)
            elif phase == "multiaddr":
                nursery.start_soon(attack_multiaddr, attacker, stop, ph)
            with trio.move_on_after(60):  # a loaded machine opens streams slowly
                await ph.hit.wait()
            print("attacking", flush=True)  # the harness starts its clock on this line
            await trio.sleep(seconds)
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2
    return {"phase": phase, "sent": ph.attack_sent}


async def _ignore(env: wire.Envelope, peer: Any) -> None:
    return None


# honest traffic ------------------------------------------------------------------------


async def honest_traffic(honest: KaisarHost, provider: Any, owner: Identity, domain: Any, job_id: int, stop: trio.Event, ph: Phase) -> None:
    from node.roles.provider import client as pclient

    async def status_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                with trio.fail_after(30):
                    env, _ = await pclient.query_status(honest, provider, owner, domain, job_id)
                assert env.body["job_id"] == job_id
                ph.status_s.append(time.perf_counter() - t0)
                ph.honest_ok += 1
            except (P2PError, FrameError, pclient.ProviderRefused, trio.TooSlowError, wire.WireError) as exc:
                ph.honest_failed += 1
                ph.errors[f"status {type(exc).__name__}"] = ph.errors.get(f"status {type(exc).__name__}", 0) + 1
                log.info("event=honest_status_failed err=%r", exc)
            await trio.sleep(0.2)

    async def tunnel_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                with trio.fail_after(30):
                    async with pclient.open_tunnel(honest, provider, owner, domain, job_id) as t:
                        await t.write(b"ping")
                        got = b""
                        while len(got) < 4:
                            chunk = await t.read()
                            if not chunk:
                                break
                            got += chunk
                assert got == b"ping", got
                ph.tunnel_s.append(time.perf_counter() - t0)
                ph.honest_ok += 1
            except (P2PError, FrameError, pclient.TunnelRefused, trio.TooSlowError, AssertionError) as exc:
                ph.honest_failed += 1
                ph.errors[f"tunnel {type(exc).__name__}"] = ph.errors.get(f"tunnel {type(exc).__name__}", 0) + 1
                log.info("event=honest_tunnel_failed err=%r", exc)
            await trio.sleep(0.3)

    async def gossip_loop() -> None:
        while not stop.is_set():
            env = honest.sign("Heartbeat", {"role": "checker", "peer": honest.peer_id.to_base58(), "addrs": []})
            try:
                await honest.publish("status/1", env)
            except Exception:
                pass
            await trio.sleep(0.3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(status_loop)
        nursery.start_soon(tunnel_loop)
        nursery.start_soon(gossip_loop)


# the run -----------------------------------------------------------------------------


async def run_hostile(
    seconds: float = 5.0,
    slowloris_streams: int = 100,
    phases: tuple[str, ...] = PHASES,
    *,
    stream_limits: StreamLimits | None = None,
    gossip_limits: GossipLimits | None = None,
) -> dict[str, Any]:
    """Run the phases; the provider's gates use the given limits (default: the config's)."""
    from node.popw.inventory import Inventory
    from node.popw.prover import Prover
    from node.roles.provider import messages as msg
    from node.roles.provider.service import (
        DEPLOY_PROTOCOL,
        LOGS_PROTOCOL,
        POPW_PROTOCOL,
        STATUS_PROTOCOL,
        TUNNEL_PROTOCOL,
        ProviderService,
        ProviderSettings,
    )  # fmt: skip
    from node.roles.provider.state import JobRecord

    protocols = [POPW_PROTOCOL, DEPLOY_PROTOCOL, TUNNEL_PROTOCOL, LOGS_PROTOCOL, STATUS_PROTOCOL]
    owner = Identity.generate()
    job_id = 1
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    result: dict[str, Any] = {"bench": "hostile", "seconds_per_phase": seconds, "phases": {}}
    with TemporaryDirectory() as tmp:
        async with start_network(2, identities=[Identity.generate(), owner]) as hosts, trio.open_nursery() as nursery:
            phost, honest = hosts
            if stream_limits is not None:
                phost.gate = StreamGate(stream_limits)
            if gossip_limits is not None:
                phost.gossip_gate = GossipGate(gossip_limits)
            listeners = await nursery.start(trio.serve_tcp, _echo, 0)
            port = listeners[0].socket.getsockname()[1]
            svc = ProviderService(
                phost, ProviderSettings(max_tunnels_per_job=8, status_interval=3600), Path(tmp) / "p.sqlite",
                inventory=Inventory(cpu="bench", cpu_count=1), prover=Prover(),
            )  # fmt: skip
            await nursery.start(svc.run)
            now = time.time()
            svc.state.put_job(
                JobRecord(
                    job_id=job_id, round=0, qc_digest=b"\x01" * 32, qc_sigs=(), owner=owner.address,
                    image="kaisar/demo-echo", port=8080, gpus=(), state=msg.RUNNING, reason="",
                    container_id="c", host_port=port, started=now, expires=now + 3600,
                )
            )  # fmt: skip
            current: dict[str, Phase] = {}

            async def on_status(env: wire.Envelope, peer: Any) -> None:
                ph = current.get("p")
                if ph is not None and env.signer == honest.address:
                    ph.gossip_s.append(max(time.time() * 1000 - env.body["issued"], 0) / 1000)

            await phost.subscribe("status/1", on_status)
            await phost.subscribe("ads/1", _ignore)
            await honest.subscribe("status/1", _ignore)

            async def dial_heard(env: wire.Envelope, peer: Any) -> None:
                # what clients and checkers do with an ad's addresses: dial them
                ph = current.get("p")
                for a in env.body["addrs"]:
                    try:
                        with trio.move_on_after(1):
                            await honest.connect(a)
                    except P2PError:
                        if ph is not None:
                            ph.dial_errors += 1

            await honest.subscribe("ads/1", dial_heard)
            await wait_for_mesh(hosts, "status/1")
            label = phost.address[:10]
            gc.collect()
            mem_before = tracemalloc.get_traced_memory()[0]
            for name in phases:
                ph = Phase(name)
                current["p"] = ph
                stop = trio.Event()
                limited_before = _limited(label, protocols)
                gossip_before = _gossip_counts(label)
                async with trio.open_nursery() as inner:
                    attack = None
                    if name != "baseline":
                        attack = await _start_attacker(name, phost.addrs()[0], seconds + 1.0, slowloris_streams)
                        await _wait_line(attack, "attacking")
                    inner.start_soon(honest_traffic, honest, phost.peer_id, owner, svc.domain, job_id, stop, ph)
                    await trio.sleep(seconds)
                    stop.set()
                if attack is not None:
                    ph.attack_sent = await _finish_attacker(attack)
                summary = ph.summary()
                summary["streams_limited"] = _limited(label, protocols) - limited_before
                accepted, rejected = (a - b for a, b in zip(_gossip_counts(label), gossip_before, strict=True))
                summary["provider_gossip_accepted"] = accepted - len(ph.gossip_s)  # not the honest ones
                summary["provider_gossip_rejected"] = rejected
                summary["open_streams_after"] = phost.gate.open_streams()
                result["phases"][name] = summary
            current.clear()
            await trio.sleep(0.5)
            gc.collect()
            mem_after = tracemalloc.get_traced_memory()[0]
            result["provider_alive"] = svc.host.host.get_network() is not None and bool(phost.addrs())
            result["provider_gossip_rejected"] = _rejected(label, phost.topic("status/1"))
            result["traced_mib_before"] = round(mem_before / 2**20, 1)
            result["traced_mib_after"] = round(mem_after / 2**20, 1)
            result["traced_growth_mib"] = round((mem_after - mem_before) / 2**20, 1)
            nursery.cancel_scope.cancel()
    if started_tracing:
        tracemalloc.stop()
    return result


async def _start_attacker(phase: str, target: str, seconds: float, streams: int) -> trio.Process:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "node.bench_hostile", phase, target, str(seconds), str(streams)]
    return await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def _wait_line(proc: trio.Process, word: str) -> None:
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(120):  # a loaded machine starts python + libp2p slowly
        while word.encode() not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"attacker exited before {word!r}")
            buf += chunk


async def _finish_attacker(proc: trio.Process) -> int:
    import json

    assert proc.stdout is not None
    out = b""
    with trio.move_on_after(20):
        while chunk := await proc.stdout.receive_some(65536):
            out += chunk
    with trio.move_on_after(5):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("{"):
            return int(json.loads(line).get("sent", 0))
    return 0


def _limited(label: str, protocols: list[str]) -> int:
    total = 0.0
    for proto in protocols:
        for reason in ("rate", "peer-concurrency", "total-concurrency"):
            total += metrics.STREAMS_LIMITED.labels(label, proto, reason)._value.get()
    return int(total)


def _gossip_counts(label: str) -> tuple[int, int]:
    """(accepted, rejected) gossip messages at the node with this label, all topics."""
    accepted = rejected = 0.0
    for metric in metrics.REGISTRY.collect():
        for s in metric.samples:
            if s.labels.get("node") != label or not s.name.endswith("_total"):
                continue
            if metric.name == "kaisar_gossip_in":
                accepted += s.value
            elif metric.name == "kaisar_gossip_rejected":
                rejected += s.value
    return int(accepted), int(rejected)


def _rejected(label: str, topic: str) -> dict[str, int]:
    out = {}
    for metric in metrics.REGISTRY.collect():
        if metric.name != "kaisar_gossip_rejected":
            continue
        for s in metric.samples:
            if s.labels.get("node") == label and s.labels.get("topic") == topic and s.name.endswith("_total"):
                out[s.labels["reason"]] = int(s.value)
    return out


def _attacker_main(argv: list[str]) -> None:
    import json

    phase, target, seconds, streams = argv[0], argv[1], float(argv[2]), int(argv[3])

    async def main() -> dict[str, Any]:
        return await run_attacker(phase, target, seconds, streams)

    print(json.dumps(trio.run(main)), flush=True)


if __name__ == "__main__":
    import sys

    _attacker_main(sys.argv[1:])
