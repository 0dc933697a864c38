"""Explorer against real libp2p hosts and the embedded chain.

- gossip from a running in-process network is validated by the observer host and
  indexed; bad gossip is counted by reason and never stored;
- contract events from the embedded chain (genesis checkers, a job) reach the API,
  and a restarted explorer resumes without duplicating them.
"""

from __future__ import annotations

import httpx
import trio

from node import wire
from node.config import from_dict
from node.devnet import DEVNET_DOMAIN, start_network
from node.explorer.service import rejected_total, run_explorer
from node.identity import Identity
from node.runner import heartbeat_loop


def explorer_config(bootstrap: list[str], db: str):
    return from_dict(
        {
            "p2p": {"bootstrap": bootstrap, "gossip_heartbeat": 0.2, "dht": False},
            "explorer": {"http_port": 0, "db": db, "commit_interval": 0.05},
        }
    )


async def wait_for(predicate, timeout: float = 15.0, step: float = 0.1):
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(step)


async def test_gossip_indexed_and_bad_gossip_counted_not_stored(tmp_path):
    async def noop(env, peer):
        pass

    async with start_network(3) as hosts, trio.open_nursery() as nursery:
        for h in hosts:  # nodes subscribe to the status topic (and so relay it)
            await h.subscribe("status/1", noop)
        # Bad gossip is dropped at the first hop that validates it, so the explorer
        # peers with every node to see what each one publishes.
        cfg = explorer_config([h.addrs()[0] for h in hosts], str(tmp_path / "ex.sqlite"))
        ex = await nursery.start(lambda task_status: run_explorer(cfg, task_status=task_status))
        for i, h in enumerate(hosts):
            nursery.start_soon(heartbeat_loop, h, ("checker", "provider")[i % 2], 0.2)
        async with httpx.AsyncClient(base_url=ex.url) as http:

            async def all_seen():
                s = (await http.get("/api/stats")).json()
                return s if s["providers"] + s["checkers"] == 3 else None

            stats = await wait_for(all_seen)
            assert stats["checkers"] == 2 and stats["providers"] == 1
            addresses = {p["address"] for p in (await http.get("/api/providers")).json()["items"]}
            assert addresses == {hosts[1].address}

            # a signed heartbeat for another network, and garbage, published by a real peer
            label = ex.host.address[:10]  # the host's metric label
            before = rejected_total(label)
            wrong_net = wire.sign(
                hosts[2].identity,
                DEVNET_DOMAIN,
                "Heartbeat",
                {"role": "provider", "peer": "x", "addrs": []},
                network="othernet",
                seq=hosts[2].next_seq(),
            )
            rogue, topic = hosts[2], hosts[2].topic("status/1")
            rogue.pubsub.remove_topic_validator(topic)  # a node that skips validation
            await rogue.pubsub.publish(topic, wrong_net.to_bytes())
            await rogue.pubsub.publish(topic, b"\x93not a message")

            async def counted():
                return rejected_total(label) >= before + 2

            await wait_for(counted)
            assert ex.store.query(
                "SELECT COUNT(*) AS n FROM messages WHERE digest = ?", (wrong_net.digest,)
            ) == [{"n": 0}]
            bodies = ex.store.query("SELECT body FROM messages")
            assert not any('"othernet"' in b["body"] for b in bodies)
            assert (await http.get("/api/stats")).json()["gossip_rejected"] >= 2
        nursery.cancel_scope.cancel()


async def test_chain_events_indexed_and_resumed(tmp_path):
    from node.chain.genesis import GenesisChecker, start_embedded

    keys = [Identity.generate() for _ in range(3)]
    dev = await start_embedded([GenesisChecker(k, k, 10**18 * (i + 1)) for i, k in enumerate(keys)])
    owner = Identity.generate()
    await dev.fund(owner.address)
    job_id = await dev.chain.create_job(
        owner,
        spec_hash=b"\x01" * 32,
        gpu_class=b"cpu".ljust(32, b"\x00"),
        count=1,
        image="busybox:latest",
        port=8080,
        duration=60,
        price_per_second=10**9,
    )
    db = str(tmp_path / "ex.sqlite")
    async with start_network(1) as hosts:
        cfg = explorer_config([hosts[0].addrs()[0]], db)
        for attempt in range(2):  # the second run is a restart on the same index
            async with trio.open_nursery() as nursery:
                ex = await nursery.start(
                    lambda task_status: run_explorer(
                        cfg, chain=dev.chain, chain_poll=0.05, task_status=task_status
                    )
                )
                async with httpx.AsyncClient(base_url=ex.url) as http:

                    async def indexed():
                        jobs = (await http.get("/api/jobs")).json()
                        checkers = (await http.get("/api/checkers?registered=true")).json()
                        return (
                            (jobs, checkers) if jobs["total"] and checkers["total"] == 3 else None
                        )

                    jobs, checkers = await wait_for(indexed)
                    [job] = jobs["items"]
                    assert (job["job_id"], job["owner"], job["image"], job["gpu_class"]) == (
                        str(job_id),
                        owner.address,
                        "busybox:latest",
                        "cpu",
                    )
                    stakes = {c["address"]: int(c["stake"]) for c in checkers["items"]}
                    assert stakes == {k.address: 10**18 * (i + 1) for i, k in enumerate(keys)}
                    detail = (await http.get(f"/api/jobs/{job_id}")).json()
                    assert [e["name"] for e in detail["chain_events"]] == ["JobCreated"]
                    await trio.sleep(0.3)  # a few more polls over the same blocks
                    n_events = ex.store.count("chain_events")
                    if attempt == 0:
                        first = n_events
                    else:
                        assert n_events == first  # resumed without duplicates
                nursery.cancel_scope.cancel()
