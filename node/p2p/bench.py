"""`kaisar bench gossip` and `kaisar bench stream` (method and results: docs/BENCHMARKS.md)."""

from __future__ import annotations

import functools
import statistics
import time

import trio

from node import wire
from node.benchstats import percentile
from node.devnet import start_network, wait_for_mesh
from node.p2p import adapter
from node.p2p.host import TOPIC_TYPES

BENCH_PING = wire.register(
    wire.MessageType(
        "BenchPing", (wire.Field("sent_ns", "uint"), wire.Field("pad", "bytes", max_len=4096)),
        max_size=8192,
    )
)
TOPIC_TYPES["status/1"].add("BenchPing")

STREAM_PROTOCOL = "/kaisar/bench-sink/1"
CHUNK = 1 << 20


async def bench_gossip(
    nodes: int = 25, rate: float = 2.0, seconds: float = 10.0, heartbeat: float = 1.0, seed: int = 1
) -> dict:
    """One publisher at ``rate`` msg/s for ``seconds``; latency of every delivery at every node."""
    params = adapter.GossipParams(6, 4, 12, heartbeat)
    latencies: list[float] = []
    count = max(1, int(rate * seconds))
    async with start_network(nodes, gossip=params, seed=seed) as hosts:
        publisher = hosts[0]

        async def on_msg(env: wire.Envelope, peer) -> None:
            if env.type == "BenchPing":
                latencies.append((time.perf_counter_ns() - env.body["sent_ns"]) / 1e6)

        for h in hosts[1:]:
            await h.subscribe("status/1", on_msg)
        await publisher.subscribe("status/1", lambda env, peer: trio.sleep(0))
        await wait_for_mesh(hosts, "status/1", timeout=60)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(count):
            env = publisher.sign("BenchPing", {"sent_ns": time.perf_counter_ns(), "pad": b""})
            await publisher.publish("status/1", env)
            await trio.sleep(1.0 / rate)
        with trio.move_on_after(5):
            while len(latencies) < count * (nodes - 1):
                await trio.sleep(0.01)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    delivered = len(latencies)
    return {
        "bench": "gossip",
        "nodes": nodes,
        "rate": rate,
        "messages": count,
        "delivered_ratio": round(delivered / (count * (nodes - 1)), 4),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "cpu_ms_per_delivery": round(cpu * 1000 / max(delivered, 1), 3),
        "cpu_share": round(cpu / wall, 3),
        "gossip_heartbeat_s": heartbeat,
    }


async def _tcp_mib_s(total: int) -> float:
    done = trio.Event()
    received = 0

    async def sink(stream: trio.SocketStream) -> None:
        nonlocal received
        while received < total:
            data = await stream.receive_some(CHUNK)
            if not data:
                break
            received += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, sink, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        payload = b"\x5a" * CHUNK
        t = time.perf_counter()
        for _ in range(total // CHUNK):
            await client.send_all(payload)
        await done.wait()
        elapsed = time.perf_counter() - t
        await client.aclose()
        nursery.cancel_scope.cancel()
    return total / elapsed / (1 << 20)


async def _libp2p_mib_s(total: int) -> float:
    async with start_network(2) as (a, b):
        done = trio.Event()
        received = 0

        async def sink(stream) -> None:
            nonlocal received
            while received < total:
                data = await stream.read(CHUNK)
                if not data:
                    break
                received += len(data)
            done.set()
            await stream.close()

        from libp2p.custom_types import TProtocol

        a.host.set_stream_handler(TProtocol(STREAM_PROTOCOL), sink)
        stream = await b.host.new_stream(a.peer_id, [TProtocol(STREAM_PROTOCOL)])
        payload = b"\x5a" * CHUNK
        t = time.perf_counter()
        for _ in range(total // CHUNK):
            await stream.write(payload)
        await done.wait()
        elapsed = time.perf_counter() - t
        await stream.close()
    return total / elapsed / (1 << 20)


async def bench_stream(mib: int = 64, repeat: int = 3) -> dict:
    total = mib << 20
    libp2p_runs = [await _libp2p_mib_s(total) for _ in range(repeat)]
    tcp_runs = [await _tcp_mib_s(total) for _ in range(repeat)]
    lib, tcp = statistics.median(libp2p_runs), statistics.median(tcp_runs)
    return {
        "bench": "stream",
        "mib": mib,
        "repeat": repeat,
        "libp2p_mib_s": round(lib, 1),
        "tcp_mib_s": round(tcp, 1),
        "ratio": round(lib / tcp, 4),
        "libp2p_runs": [round(x, 1) for x in libp2p_runs],
    }
