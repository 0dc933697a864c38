"""Engine restart safety: a vote made durable but never sent is never contradicted."""

from __future__ import annotations

import trio
from eth_utils import keccak

from node.consensus.assignment import get_leader
from node.consensus.checkers import make_checker_set
from node.consensus.qc import PrepareQC, Proposal, sign_prevote
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.store import VoteStore
from node.eip712 import Domain
from node.identity import Identity
from node.roles.checker import messages as m
from node.roles.checker.engine import AssignmentEngine, store_path

DOMAIN = Domain(1337, "0x" + "11" * 20)
KEYS = [Identity(keccak(f"engine-checker{i}".encode())) for i in range(4)]
CHECKERS = make_checker_set((k.address, 1) for k in KEYS)
A = Identity(keccak(b"provider-a")).address
B = Identity(keccak(b"provider-b")).address
SPEC = JobSpec(7, "cpu", 1, 10**18)
VIEW = [ProviderInfo(A, "cpu", 1, 1, 0), ProviderInfo(B, "cpu", 1, 1, 0)]


class FakeHost:
    """Signs like the real host; publish either records or hangs (a crash before send)."""

    def __init__(self, me: Identity, hang: bool = False) -> None:
        self.identity, self.address, self.hang = me, me.address, hang
        self.sent: list = []
        self.recorded = trio.Event()

    async def subscribe(self, suffix, handler) -> None:
        pass

    def sign(self, type_name, fields, ttl_ms=None):
        from node import wire

        return wire.sign(
            self.identity, DOMAIN, type_name, fields, network="t", seq=len(self.sent) + 1
        )

    async def publish(self, suffix, env) -> None:
        if self.hang:
            self.recorded.set()
            await trio.sleep_forever()
        self.sent.append(env)


def polka(provider):
    sigs = tuple(sign_prevote(k, DOMAIN, SPEC.job_id, 0, provider).signature for k in KEYS[:3])
    return PrepareQC(SPEC.job_id, 0, provider, sigs)


async def test_restart_never_signs_against_a_stored_vote(tmp_path):
    leader_addr = get_leader(CHECKERS, SPEC.job_id, 0)
    leader = next(k for k in KEYS if k.address == leader_addr)
    me = next(k for k in KEYS if k.address != leader_addr)
    to_a = Proposal(sign_prevote(leader, DOMAIN, SPEC.job_id, 0, A))
    to_b = Proposal(sign_prevote(leader, DOMAIN, SPEC.job_id, 0, B))  # the leader equivocates

    # First life: prevote and precommit for A are signed and stored, then the process
    # dies before anything is sent (FakeHost has no streams: votes go by gossip, which hangs).
    host = FakeHost(me, hang=True)
    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as nursery:
            engine = AssignmentEngine(host, me, DOMAIN, CHECKERS, tmp_path, timeout_base=60)
            await nursery.start(engine.run)
            await engine.start_job(SPEC, VIEW, 0)
            await engine.on_message(to_a)
            await engine.on_message(polka(A))
            await host.recorded.wait()
            nursery.cancel_scope.cancel()  # killed between store and send
    assert not scope.cancelled_caught
    store = VoteStore.open(store_path(tmp_path, 0))
    stored = store.assign_votes(SPEC.job_id)
    prevoted = store.assign_prevotes(SPEC.job_id)
    store.close()
    assert [(v.round, v.provider) for v in stored] == [(0, A)]
    assert [(v.round, v.provider) for v in prevoted] == [(0, A)]

    # Second life on the same data_dir: a conflicting proposal for B arrives first.
    host2 = FakeHost(me)
    async with trio.open_nursery() as nursery:
        engine = AssignmentEngine(host2, me, DOMAIN, CHECKERS, tmp_path, timeout_base=60)
        await nursery.start(engine.run)
        await engine.on_message(to_b)
        await engine.start_job(SPEC, VIEW, 0)
        await engine.on_message(to_a)
        await trio.sleep(0.1)  # let the spawned sends run
        nursery.cancel_scope.cancel()
    assert not [e for e in host2.sent if e.type == "AssignPrevoteMsg"]  # round 0 is spent
    mine = [m.assignment_from(e) for e in host2.sent if e.type == "AssignVoteMsg"]
    assert mine, "the stored precommit is re-sent after the restart"
    assert {(v.round, v.provider) for v in mine} == {(0, A)}
    # the same signature, not a new vote
    assert {v.signature for v in mine} == {stored[0].signature}
