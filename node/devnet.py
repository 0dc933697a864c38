"""A whole network in one trio process, on 127.0.0.1, with fresh keys.

``start_network(n)`` is the in-process harness used by tests and benchmarks: N hosts,
connected (each dials an earlier one, so the graph is connected without a single hub),
ready when every host has a peer. ``run_devnet`` is what `kaisar devnet` runs: N full
nodes (``runner.run_node``: heartbeats on the status topic) and a live report of which
node has heard which, until every node has heard every other.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from node.config import Config, from_dict
from node.eip712 import Domain
from node.identity import Identity
from node.p2p import adapter
from node.p2p.host import HostOptions, KaisarHost, open_host
from node.runner import PeerView, run_node

log = logging.getLogger("kaisar.devnet")

DEVNET_NETWORK = "devnet"
DEVNET_DOMAIN = Domain(1337)
BOOTSTRAP_FANOUT = 2
FAST_GOSSIP = adapter.GossipParams(degree=6, degree_low=4, degree_high=12, heartbeat_interval=0.2)


@asynccontextmanager
async def start_network(
    n: int,
    *,
    network: str = DEVNET_NETWORK,
    domain: Domain = DEVNET_DOMAIN,
    gossip: adapter.GossipParams = FAST_GOSSIP,
    dht: bool = False,
    seed: int = 0,
    identities: list[Identity] | None = None,
) -> AsyncIterator[list[KaisarHost]]:
    """N connected hosts in this process (each dials up to 3 earlier ones); closed on exit."""
    rng = random.Random(seed)
    idents = identities or [Identity.generate() for _ in range(n)]
    hosts: list[KaisarHost] = []
    async with AsyncExitStack() as stack:
        for i in range(n):
            # dial up to BOOTSTRAP_FANOUT earlier nodes, as bootstrap + DHT discovery would
            boot = [h.addrs()[0] for h in rng.sample(hosts, min(BOOTSTRAP_FANOUT, len(hosts)))]
            opts = HostOptions(bootstrap=boot, gossip=gossip, dht=dht)
            host = await stack.enter_async_context(
                open_host(idents[i], network=network, domain=domain, options=opts)
            )
            hosts.append(host)
        with trio.fail_after(30):
            while not all(h.connected_peers() for h in hosts[1:]) or (
                n > 1 and not hosts[0].connected_peers()
            ):
                await trio.sleep(0.01)
        yield hosts


async def wait_for_mesh(hosts: list[KaisarHost], suffix: str, timeout: float = 30) -> None:
    """Wait until every host has at least one mesh peer on a topic (gossip will flow)."""
    def mesh(h: KaisarHost) -> set:
        return set(h.gossipsub.mesh.get(h.topic(suffix), set()))

    def ready() -> bool:
        # Every host has a mesh peer and is in some other host's mesh (its GRAFT was
        # answered), so a message published now reaches everyone through the mesh.
        # (Requiring every link to be mutual can stall: a PRUNE in flight leaves
        # one-sided links for a heartbeat or more.)
        meshes = {h.peer_id: mesh(h) for h in hosts}
        inbound = set().union(*meshes.values()) if meshes else set()
        return all(meshes[h.peer_id] for h in hosts) and all(
            h.peer_id in inbound for h in hosts if len(hosts) > 1
        )

    with trio.fail_after(timeout):
        while not ready():
            await trio.sleep(0.02)


def node_config(network: str, bootstrap: list[str], heartbeat: float) -> Config:
    return from_dict(
        {
            "node": {"network": network},
            "p2p": {
                "listen": ["/ip4/127.0.0.1/tcp/0"],
                "bootstrap": bootstrap,
                "heartbeat_interval": heartbeat,
                "gossip_heartbeat": 0.2,
                "dht": True,
            },
        }
    )


async def start_devnet_explorer(bootstrap: list[str], *, task_status=trio.TASK_STATUS_IGNORED):
    """An explorer (in-memory index, any free HTTP port) peered with every devnet node."""
    from node.explorer.service import run_explorer

    cfg = from_dict(
        {
            "node": {"network": DEVNET_NETWORK},
            "p2p": {"bootstrap": bootstrap, "gossip_heartbeat": 0.2, "dht": False},
            "explorer": {"http_port": 0, "db": ":memory:"},
        }
    )
    await run_explorer(cfg, task_status=task_status)


async def run_devnet(
    n: int = 5,
    *,
    timeout: float = 60.0,
    keep_running: bool = False,
    as_json: bool = False,
    heartbeat: float = 0.5,
) -> bool:
    """Start N nodes (alternating checker/provider roles), report gossip until all heard all."""
    t0 = time.monotonic()
    views = [PeerView() for _ in range(n)]
    roles = ["checker" if i % 2 == 0 else "provider" for i in range(n)]
    idents = [Identity.generate() for _ in range(n)]

    def emit(step: str, **fields) -> None:
        fields = {"step": step, "t": round(time.monotonic() - t0, 3), **fields}
        if as_json:
            print(json.dumps(fields), flush=True)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("step", "t"))
            print(f"[{fields['t']:7.3f}s] {step:<14} {extra}", flush=True)

    ok = False
    async with trio.open_nursery() as nursery:
        hosts: list[KaisarHost] = []
        for i in range(n):
            boot = [hosts[(i - 1) // 2].addrs()[0]] if hosts else []
            cfg = node_config(DEVNET_NETWORK, boot, heartbeat)
            host = await nursery.start(
                lambda task_status, c=cfg, k=idents[i], r=roles[i], v=views[i]: run_node(
                    c, k, role=r, view=v, task_status=task_status
                )
            )
            hosts.append(host)
            emit("node_started", role=roles[i], address=idents[i].address, peer_id=host.peer_id.to_base58(), addr=host.addrs()[0])
        explorer = await nursery.start(start_devnet_explorer, [h.addrs()[0] for h in hosts])
        emit("explorer_started", url=explorer.url)
        reported: set[tuple[int, str]] = set()
        with trio.move_on_after(timeout):
            while True:
                for i, view in enumerate(views):
                    for addr, info in view.heard.items():
                        if (i, addr) not in reported:
                            reported.add((i, addr))
                            emit("gossip_heard", node=idents[i].address[:10], heard=addr[:10], role=info["role"], seq=info["seq"])
                if all(len(v.heard) >= n - 1 for v in views):
                    ok = True
                    break
                await trio.sleep(0.05)
        emit(
            "summary",
            ok=ok,
            nodes=n,
            heard_pairs=sum(len(v.heard) for v in views),
            expected_pairs=n * (n - 1),
        )
        if keep_running and ok:
            emit("running", bootstrap=hosts[0].addrs()[0])
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    return ok
