"""Relayed vs direct libp2p connection, in one process (docs/BENCHMARKS.md, "Relay").

Usage: .venv/bin/python scripts/bench_relay.py [MiB] [runs]

Three hosts on 127.0.0.1: a relay running Kaisar's hop (``run_hop``), a provider
holding a reservation on it, a client. For each run: dial time (new connection,
Noise + Yamux, through the relay = relay CONNECT + STOP + a second Noise + Yamux
over the circuit) and the throughput of one stream carrying MiB bytes, direct and
relayed, alternating. Prints one JSON line with the medians.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import trio
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.tools.anyio_service import background_trio_service

from node.devnet import DEVNET_DOMAIN
from node.identity import Identity
from node.p2p import dial
from node.p2p.host import HostOptions, open_host
from node.p2p.relay import HopSettings, reserve, run_hop

SINK = "/bench/sink/1"
CHUNK = 1 << 20


async def sink(stream) -> None:
    total = 0
    try:
        while data := await stream.read(CHUNK):
            total += len(data)
    except StreamEOF:
        pass
    await stream.write(str(total).encode())
    await stream.close()


async def one_run(client, provider, addrs: list[str], mib: int) -> tuple[float, float]:
    await client.host.get_network().close_peer(provider.peer_id)
    client.host.get_peerstore().clear_addrs(provider.peer_id)  # only ``addrs`` are known
    t0 = time.perf_counter()
    await dial.connect(client, provider.peer_id, addrs)
    dial_ms = (time.perf_counter() - t0) * 1000
    stream = await client.host.new_stream(provider.peer_id, [SINK])
    payload = b"x" * CHUNK
    t0 = time.perf_counter()
    for _ in range(mib):
        await stream.write(payload)
    await stream.close_write()
    with trio.fail_after(60):
        assert int(await stream.read(64)) == mib * CHUNK
    return dial_ms, mib / (time.perf_counter() - t0)


async def main(mib: int, runs: int) -> None:
    opts = HostOptions(dht=False)
    hs = HopSettings(circuit_bytes=0, circuit_duration=0)

    def host():
        return open_host(Identity.generate(), network="bench", domain=DEVNET_DOMAIN, options=opts)

    async with host() as relay, host() as provider, host() as client, trio.open_nursery() as n:
        await n.start(run_hop, relay, hs)
        await provider.connect(relay.addrs()[0])
        await reserve(provider, relay.peer_id)
        provider.host.set_stream_handler(SINK, sink)
        direct = provider.addrs()
        relayed = [f"{relay.addrs()[0]}/p2p-circuit/p2p/{provider.peer_id.to_base58()}"]
        stop = CircuitV2Protocol(provider.host, allow_hop=False)
        out: dict[str, list] = {"direct": [], "relayed": []}
        async with background_trio_service(stop):
            for _ in range(runs):
                out["direct"].append(await one_run(client, provider, direct, mib))
                out["relayed"].append(await one_run(client, provider, relayed, mib))
                assert dial.is_relayed(client, provider.peer_id)
        n.cancel_scope.cancel()
    result: dict[str, object] = {"bench": "relay", "mib": mib, "runs": runs}
    for path, rows in out.items():
        result[f"{path}_dial_ms"] = round(statistics.median(r[0] for r in rows), 1)
        result[f"{path}_mib_s"] = round(statistics.median(r[1] for r in rows), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 32, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
