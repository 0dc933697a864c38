"""Engine restart safety: a vote made durable but never sent is never contradicted."""

from __future__ import annotations

import trio
from eth_utils import keccak

from node.consensus.assignment import get_leader
from node.consensus.checkers import make_checker_set
from node.consensus.qc import PrepareQC, Proposal, sign_prevote
from node.consensus.scheduler import JobSpec, ProviderInfo, round_reason, why_not_eligible
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


async def _decide_one_job(tmp_path, full_mesh: bool) -> list[AssignmentEngine]:
    from node.devnet import start_network, wait_for_mesh

    async with (
        start_network(4, identities=KEYS, domain=DOMAIN) as hosts,
        trio.open_nursery() as nursery,
    ):
        if full_mesh:
            for k, a in enumerate(hosts):
                for b in hosts[k + 1 :]:
                    await a.connect(b.addrs()[0])
        engines = []
        for i, h in enumerate(hosts):
            e = AssignmentEngine(h, KEYS[i], DOMAIN, CHECKERS, tmp_path / f"c{i}", timeout_base=30)
            await nursery.start(e.run)
            engines.append(e)
        await wait_for_mesh(hosts, m.ASSIGN_TOPIC)
        for e in engines:
            await e.start_job(SPEC, VIEW, 0)
        with trio.fail_after(20):
            while not all(e.decided(SPEC.job_id) for e in engines):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return engines


async def test_votes_go_direct_to_the_leader_on_real_hosts(tmp_path):
    """4 real libp2p hosts, all connected: prevotes, precommits, the proposal and the
    PrepareQC travel on /kaisar/vote/1 streams; only the AssignQC is gossiped."""
    engines = await _decide_one_job(tmp_path, full_mesh=True)
    qcs = {e.decided(SPEC.job_id) for e in engines}
    assert len(qcs) == 1 and next(iter(qcs)).provider in (A, B)
    direct = sum(e.sent_direct for e in engines)
    # proposal + PrepareQC to 3 checkers, 3 prevotes, 3 precommits, and the AssignQC gossip;
    # a stream that cannot be opened in time (loaded machine) sends its share by gossip
    assert direct > 0
    assert direct + sum(e.published for e in engines) <= 4 * (len(engines) - 1) + 1


async def test_unreachable_checkers_get_their_messages_by_gossip(tmp_path, monkeypatch):
    """When no checker's peer is known (no connection, no DHT record), every direct
    message goes by gossip instead, and the job is still decided once."""
    monkeypatch.setattr(AssignmentEngine, "_peer_of", lambda self, address: None)
    engines = await _decide_one_job(tmp_path, full_mesh=False)
    qcs = [e.decided(SPEC.job_id) for e in engines]  # each may hold its own quorum of sigs
    assert len({(qc.round, qc.provider) for qc in qcs if qc}) == 1
    assert sum(e.sent_direct for e in engines) == 0
    assert sum(e.published for e in engines) >= 1 + 2 + 2 * (len(engines) - 1)


async def test_a_job_event_after_the_engine_stopped_is_ignored(tmp_path):
    """Seen in CI: the checker service handled a JobCreated while its engine was stopping
    and the engine touched its closed SQLite store (a reassignment carries old votes)."""
    me = KEYS[0]
    host = FakeHost(me)
    async with trio.open_nursery() as nursery:
        engine = AssignmentEngine(host, me, DOMAIN, CHECKERS, tmp_path, timeout_base=60)
        await nursery.start(engine.run)
        await engine.start_job(SPEC, VIEW, 0)
        nursery.cancel_scope.cancel()
    await engine.start_job(SPEC, VIEW, 0, attempt=1, first_round=1)  # no ProgrammingError
    assert 1 not in engine.machines


async def test_a_reopened_job_never_prevotes_twice_in_one_round(tmp_path):
    """JobReassigned reopens a job at round + 1 in a new attempt (a new store). A prevote
    this checker signed in the old attempt for a round >= the reopened one is carried
    over, so the new attempt does not prevote another provider in that (job, round)."""
    lead0, lead1 = (get_leader(CHECKERS, SPEC.job_id, r) for r in (0, 1))
    me = next(k for k in KEYS if k.address not in (lead0, lead1))
    leader1 = next(k for k in KEYS if k.address == lead1)
    host = FakeHost(me)
    async with trio.open_nursery() as nursery:
        engine = AssignmentEngine(host, me, DOMAIN, CHECKERS, tmp_path, timeout_base=60)
        await nursery.start(engine.run)
        await engine.start_job(SPEC, VIEW, 0)
        # attempt 0 moves on to round 1 (its leader's proposal for A): we prevote A there
        await engine.on_message(Proposal(sign_prevote(leader1, DOMAIN, SPEC.job_id, 1, A)))
        await trio.sleep(0.05)
        assert {(v.round, v.provider) for v in engine.machine(0).store.assign_prevotes(SPEC.job_id)} == {(1, A)}
        # the chain reopens the job at round 1; the round-1 leader now proposes B
        host.sent.clear()
        await engine.start_job(SPEC, VIEW, 0, attempt=1, first_round=1)
        await engine.on_message(Proposal(sign_prevote(leader1, DOMAIN, SPEC.job_id, 1, B)))
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    prevotes = [m.assignment_from(e) for e in host.sent if e.type == "AssignPrevoteMsg"]
    assert not [(v.round, v.provider) for v in prevotes if v.round == 1 and v.provider != A]


async def _rounds_without_qc(tmp_path, view, rounds: int) -> AssignmentEngine:
    """One engine alone (no quorum possible) runs ``rounds`` rounds of SPEC on ``view``,
    explaining its view as the checker service does (scheduler misses)."""
    me = KEYS[0]

    def explain(spec):
        misses = {p.address: why_not_eligible(spec, p, 0) for p in view}
        return round_reason(misses.values()), misses

    engine = AssignmentEngine(
        FakeHost(me), me, DOMAIN, CHECKERS, tmp_path, timeout_base=0.02,
        view=lambda spec: (view, 0), explain=explain,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.start_job(SPEC, view, 0)
        with trio.fail_after(20):
            while engine.round_summary(SPEC.job_id)[0] < rounds:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return engine


def _round_lines(caplog) -> dict[int, str]:
    out = {}
    for rec in caplog.records:
        msg = rec.getMessage()
        if msg.startswith("event=assign_round "):
            fields = dict(f.split("=", 1) for f in msg.split())
            out[int(fields["round"])] = msg
    return out


async def test_a_round_without_a_provider_logs_the_nearest_miss(tmp_path, caplog):
    """Nobody eligible: A fits but has no PoPW standing, B has standing and no free GPU.
    Every round is logged (and counted) as no_capacity, the nearest miss, with each
    provider's own miss, so a soak can tell standing gaps from capacity from faults."""
    caplog.set_level("INFO", logger="kaisar.checker.engine")
    view = [ProviderInfo(A, "cpu", 1, 1, None), ProviderInfo(B, "cpu", 0, 1, 0)]
    engine = await _rounds_without_qc(tmp_path, view, 4)
    rounds, reasons = engine.round_summary(SPEC.job_id)
    assert rounds >= 4 and reasons == {"no_capacity": rounds}
    lines = _round_lines(caplog)
    assert set(range(4)) <= set(lines)
    assert f"{A[:10]}:no_standing" in lines[0] and f"{B[:10]}:no_capacity" in lines[0]
    assert "proposed=-" in lines[0]
    engine.forget(SPEC.job_id)
    assert engine.round_summary(SPEC.job_id) == (0, {})  # bounded: dropped when settled


async def test_rounds_with_a_provider_tell_a_silent_leader_from_a_missing_quorum(tmp_path, caplog):
    """A is eligible. In rounds this checker leads it proposes A and no quorum follows
    (it is alone): no_quorum. In the others no proposal comes: leader_timeout."""
    caplog.set_level("INFO", logger="kaisar.checker.engine")
    view = [ProviderInfo(A, "cpu", 1, 1, 0)]
    engine = await _rounds_without_qc(tmp_path, view, 5)
    lines = _round_lines(caplog)
    assert set(range(5)) <= set(lines)
    for r in range(5):
        mine = get_leader(CHECKERS, SPEC.job_id, r) == KEYS[0].address
        want = f"reason=no_quorum proposed={A}" if mine else "reason=leader_timeout proposed=-"
        assert want in lines[r], (r, lines[r])
    assert set(engine.round_summary(SPEC.job_id)[1]) <= {"no_quorum", "leader_timeout"}


def test_round_reason_is_the_nearest_miss():
    spec = JobSpec(1, "cpu", 2, 100)
    assert why_not_eligible(spec, ProviderInfo(A, "gpu", 2, 1, 0), 0) == "class"
    assert why_not_eligible(spec, ProviderInfo(A, "cpu", 2, 101, 0), 0) == "price"
    assert why_not_eligible(spec, ProviderInfo(A, "cpu", 0, 1, None), 0) == "no_standing"
    assert why_not_eligible(spec, ProviderInfo(A, "cpu", 1, 1, 0), 0) == "no_capacity"
    assert why_not_eligible(spec, ProviderInfo(A, "cpu", 2, 1, 0), 0) == "eligible"
    assert round_reason([]) == "no_ad"
    assert round_reason(["stale_ad", "no_standing", "price"]) == "no_standing"
    assert round_reason(["no_capacity", "stale_ad", "no_standing"]) == "no_capacity"
    assert round_reason(["stale_ad", "eligible"]) == "eligible"
