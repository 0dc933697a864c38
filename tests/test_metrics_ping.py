"""Node metrics over HTTP (Prometheus text) and libp2p ping between hosts."""

import socket
import urllib.request

import trio
from libp2p.host.ping import PingService

from node.config import from_dict
from node.devnet import start_network
from node.identity import Identity
from node.runner import run_node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_node_serves_prometheus_metrics():
    port = free_port()
    async with start_network(1) as (peer,):
        cfg = from_dict({
            "node": {"network": "devnet"},
            "p2p": {"bootstrap": [peer.addrs()[0]], "heartbeat_interval": 0.1, "dht": False},
            "metrics": {"port": port},
        })
        async with trio.open_nursery() as nursery:
            host = await nursery.start(lambda task_status: run_node(cfg, Identity.generate(), role="checker", task_status=task_status))
            label = host.address[:10]
            text = ""
            with trio.fail_after(10):
                while f'kaisar_peers{{node="{label}"}} 1.0' not in text or "kaisar_gossip_out_total" not in text:
                    await trio.sleep(0.2)
                    text = await trio.to_thread.run_sync(
                        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                    )
            assert f'kaisar_gossip_out_total{{node="{label}",topic="/kaisar/devnet/status/1"}}' in text
            nursery.cancel_scope.cancel()


async def test_ping_between_hosts():
    async with start_network(2) as (a, b):
        rtts = await PingService(a.host).ping(b.peer_id, ping_amt=3)
        assert len(rtts) == 3 and all(r >= 0 for r in rtts)
