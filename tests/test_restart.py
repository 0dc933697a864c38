"""Restart safety (issue #10.2) with real OS processes and kill -9 (node/procnet.py).

- A checker killed between signing a vote and gossiping it (the engine's test-only
  crash hook) resumes from its SQLite vote store and never signs another provider for
  that job: the chain's first assignment is the vote it signed before the crash, even
  though that provider is dead by then and another one is eligible.

The provider and client halves (re-adopting containers, re-running a killed `kaisar
client wait` / `connect`) are in tests/test_procnet.py, on the #6 network.
"""

from __future__ import annotations

import json

import pytest
import trio
from test_procnet import anvil_or_skip, wait_for

from node.consensus.store import VoteStore
from node.procnet import open_procnet
from node.roles.checker.engine import CRASH_AFTER_SIGN_ENV

pytestmark = [pytest.mark.docker, pytest.mark.anvil, pytest.mark.slow]


async def test_checker_killed_between_sign_and_gossip_never_signs_a_conflicting_vote(
    docker_engine, tmp_path
):
    anvil_or_skip()
    marker = tmp_path / "crashed-after-sign.json"
    async with open_procnet(
        tmp_path / "net", checkers=1, providers=2, docker_host=docker_engine.host,
        checker_env=[{CRASH_AFTER_SIGN_ENV: str(marker)}],
    ) as net:  # fmt: skip
        checker = net.checkers[0]
        for p in net.providers:  # both providers are eligible before the job exists
            await checker.wait_line("event=popw_qc ", f"provider={p.address} verdict=1", timeout=90)
        async with net.client() as client:
            job = await client.buy("cpu", 1, "kaisar/demo-http:latest", 8080, hours=1)
            # the checker signs its vote (the machine stores it first) and dies before gossip
            await wait_for(lambda: trio.to_thread.run_sync(lambda: checker.proc.poll() is not None),
                           90, "the crash hook")  # fmt: skip
            assert checker.proc.returncode == 86, checker.log_text()[-2000:]
            signed = json.loads(marker.read_text())
            assert signed["job"] == job
            store = VoteStore.open(checker.data_dir / "votes.sqlite")
            stored = [(v.round, v.provider, v.signature.hex()) for v in store.assign_votes(job)]
            store.close()
            assert stored == [(signed["round"], signed["provider"], signed["signature"])]
            assert not [e for e in await net.escrow_events() if e.name == "JobAssigned"]

            # the provider it voted for dies too; only the other one advertises now
            voted = next(p for p in net.providers if p.address == signed["provider"])
            other = next(p for p in net.providers if p is not voted)
            voted.kill9()
            await net.restart(checker)

            async def assignments():
                evs = await net.escrow_events()
                return [e.args for e in evs if e.name == "JobAssigned" and e.args["job_id"] == job]

            first = (await wait_for(assignments, 90, "the job's first assignment"))[0]
            # the chain took the vote signed before the crash, not a fresh one for `other`
            assert (first["round"], first["provider"]) == (signed["round"], voted.address)
            # the dead provider is then failed by the checker and the job goes to the other
            # one, whose container a client verifies
            later = await wait_for(
                lambda: _assigned_to(assignments, other.address), 120, "the reassignment"
            )
            assert later["round"] > signed["round"]
            dep = await client.wait_deployed(job, timeout=120)
            assert dep.provider == other.address
        text = checker.log_text()
        assert "event=equivocation" not in text and "Traceback" not in text


async def _assigned_to(assignments, provider: str):
    for a in await assignments():
        if a["provider"] == provider:
            return a
    return None


@pytest.mark.parametrize("upstream_ttl", [False, True])
async def test_a_peer_back_on_its_address_is_dialled_again_at_once(upstream_ttl):
    """adapter.py item 16: py-libp2p refuses to re-dial a peer for 60 s after a failed
    dial; a node restarted within that minute stayed unreachable. Ours: 1 s."""
    from node.eip712 import Domain
    from node.identity import Identity
    from node.p2p import adapter
    from node.p2p.host import HostOptions, P2PError, open_host
    from node.procnet import free_port

    a_id, b_id, port = Identity.generate(), Identity.generate(), free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{a_id.peer_id.to_base58()}"
    opts = HostOptions(dht=False)
    async with open_host(b_id, network="t", domain=Domain(1337), options=opts) as b:
        if upstream_ttl:
            adapter.shorten_dial_negative_cache(b.host.get_network(), 60.0)
        with pytest.raises(P2PError):
            await b.connect(addr)  # A is down (killed)
        a_opts = HostOptions(listen=[f"/ip4/127.0.0.1/tcp/{port}"], dht=False)
        async with open_host(a_id, network="t", domain=Domain(1337), options=a_opts):
            await trio.sleep(adapter.DIAL_NEGATIVE_CACHE_TTL + 0.2)  # A is back
            if upstream_ttl:
                with pytest.raises(P2PError, match="negative cache"):
                    await b.connect(addr)
            else:
                assert await b.connect(addr) == a_id.peer_id
