"""Assignment rounds: leader rotation, timeouts, the vote/lock rule, and the state machine."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus import assignment as rules
from node.consensus.checkers import make_checker_set
from node.consensus.machine import AssignmentMachine, Broadcast, Decided, Slash, StartTimer
from node.consensus.qc import AssignQC, SignedAssignVote, is_valid_assign_qc, sign_assign_vote
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.store import VoteConflict, VoteStore
from node.eip712 import Domain
from node.identity import Identity

DOMAIN = Domain(chain_id=31337)
IDS = [Identity(keccak(f"machine-test-{i}".encode())) for i in range(7)]
CHECKERS = make_checker_set((i.address, 1) for i in IDS[:4])
P1, P2, P3 = ("0x" + k * 20 for k in ("a1", "a2", "a3"))
PROVIDERS = (
    ProviderInfo(P1, "A100", 8, 100, 0),
    ProviderInfo(P2, "A100", 8, 110, 0),
    ProviderInfo(P3, "A100", 8, 120, 0),
)
JOB = JobSpec(42, "A100", 1, 1000)


# leader rotation and timeouts ---------------------------------------------------------


def test_leader_rotation_is_a_deterministic_permutation():
    order = rules.get_leader_order(CHECKERS, 42)
    assert sorted(order) == sorted(CHECKERS.addresses)
    assert [rules.get_leader(CHECKERS, 42, r) for r in range(8)] == list(order) * 2
    assert order == tuple(
        sorted(
            CHECKERS.addresses,
            key=lambda c: keccak((42).to_bytes(32, "big") + bytes.fromhex(c[2:])),
        )
    )
    assert len({rules.get_leader_order(CHECKERS, j) for j in range(20)}) > 1  # differs per job


@given(st.integers(0, 2**256 - 1), st.integers(0, 10**6))
@settings(max_examples=100)
def test_every_checker_leads_once_per_n_rounds(job_id, start):
    leaders = {rules.get_leader(CHECKERS, job_id, start + k) for k in range(len(CHECKERS))}
    assert leaders == set(CHECKERS.addresses)


def test_round_timeout_grows_then_caps():
    t = [rules.round_timeout(r, 1.0) for r in range(6)]
    assert t == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


# the vote rule ----------------------------------------------------------------------------


def test_lock_rules():
    lock = rules.NO_LOCK
    assert rules.may_sign_assignment(lock, 0, P1, released=False)
    lock = rules.record_own_vote(lock, 0, P1)
    # at most one vote per (job, round), even for the same provider
    assert not rules.may_sign_assignment(lock, 0, P1, released=True)
    # later rounds: only the locked provider, unless released
    assert rules.may_sign_assignment(lock, 1, P1, released=False)
    assert not rules.may_sign_assignment(lock, 1, P2, released=False)
    assert rules.may_sign_assignment(lock, 1, P2, released=True)
    # after a QC: nothing at all
    seen = rules.record_qc_seen(lock)
    assert not rules.may_sign_assignment(seen, 1, P1, released=True)
    assert rules.proposal_for(lock, False, P2) == P1
    assert rules.proposal_for(lock, True, P2) == P2
    assert rules.proposal_for(rules.NO_LOCK, False, P2) == P2


def test_lock_release_needs_quorum_of_other_votes_at_or_after_lock_round():
    a, b, c, d = CHECKERS.addresses
    lock = rules.record_own_vote(rules.NO_LOCK, 2, P1)
    two_others = {2: {b: {P2}, c: {P3}}}
    assert not rules.is_lock_released(lock, two_others, CHECKERS)  # 2 of 4 < 2/3
    three = {2: {b: {P2}, c: {P3}, d: {P2}}}
    assert rules.is_lock_released(lock, three, CHECKERS)  # 3 of 4, none for P1
    assert not rules.is_lock_released(lock, {1: three[2]}, CHECKERS)  # before my lock round
    with_p1 = {3: {a: {P1}, b: {P1}, c: {P2}}}
    assert not rules.is_lock_released(lock, with_p1, CHECKERS)
    equivocator = {3: {b: {P1, P2}, c: {P2}, d: {P3}}}  # b signed both: counts as "other"
    assert rules.is_lock_released(lock, equivocator, CHECKERS)


# the machine ------------------------------------------------------------------------------


def machines(n=4, stores=None):
    checkers = make_checker_set((i.address, 1) for i in IDS[:n])
    return [
        AssignmentMachine(IDS[k], DOMAIN, checkers, stores[k] if stores else None, timeout_base=1.0)
        for k in range(n)
    ], checkers


def run_net(ms, inputs, drop=lambda src, dst, msg: False):
    """Deliver every Broadcast to every other machine until quiet. Returns outputs per machine."""
    by_addr = {m.address: k for k, m in enumerate(ms)}
    log: list[list] = [[] for _ in ms]
    queue = list(inputs)
    while queue:
        k, outs = queue.pop(0)
        log[k] += outs
        for o in outs:
            if isinstance(o, Broadcast):
                for j, m in enumerate(ms):
                    if j == k or drop(k, j, o.message):
                        continue
                    fn = m.on_vote if isinstance(o.message, SignedAssignVote) else m.on_qc
                    queue.append((j, fn(o.message)))
    del by_addr
    return log


def decided(log):
    return [o.qc for o in log if isinstance(o, Decided)]


def test_four_honest_machines_decide_the_scheduled_provider_in_round_0():
    ms, checkers = machines()
    log = run_net(ms, [(k, m.on_job(JOB, PROVIDERS, 0)) for k, m in enumerate(ms)])
    for k, m in enumerate(ms):
        qcs = decided(log[k])
        assert len(qcs) == 1 and qcs[0].provider == P1 and qcs[0].round == 0
        assert is_valid_assign_qc(DOMAIN, checkers, qcs[0])
        assert m.decided(42) == qcs[0]
        assert any(isinstance(o, StartTimer) and o.round == 0 for o in log[k])


def test_leader_crash_moves_to_next_leader_on_timeout():
    ms, checkers = machines()
    leader0 = rules.get_leader(checkers, 42, 0)
    alive = [k for k, m in enumerate(ms) if m.address != leader0]
    log = run_net(
        ms,
        [(k, ms[k].on_job(JOB, PROVIDERS, 0)) for k in alive],
        drop=lambda s, d, m: ms[d].address == leader0,
    )
    assert not any(decided(log[k]) for k in alive)
    log = run_net(
        ms,
        [(k, ms[k].on_timeout(42, 0)) for k in alive],
        drop=lambda s, d, m: ms[d].address == leader0,
    )
    for k in alive:
        qc = decided(log[k])[0]
        assert (qc.round, qc.provider) == (1, P1)
    assert ms[alive[0]].on_timeout(42, 1) == []  # decided: no more rounds


def test_stale_timeout_is_ignored():
    ms, _ = machines()
    ms[0].on_job(JOB, PROVIDERS, 0)
    assert ms[0].on_timeout(42, 5) == []
    assert ms[0].on_timeout(7, 0) == []


def test_machine_refuses_second_proposal_in_round_and_reports_equivocating_leader():
    ms, checkers = machines()
    leader = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    voter = next(m for m in ms if m.address != leader.address)
    voter.on_job(JOB, PROVIDERS, 0)
    a = sign_assign_vote(leader, DOMAIN, 42, 0, P1)
    b = sign_assign_vote(leader, DOMAIN, 42, 0, P2)
    out_a = voter.on_vote(a)
    own = [o.message for o in out_a if isinstance(o, Broadcast)]
    assert [(v.provider, v.signer) for v in own] == [(P1, voter.address)]
    out_b = voter.on_vote(b)
    assert not [o for o in out_b if isinstance(o, Broadcast)]  # no second vote in round 0
    slash = [o.evidence for o in out_b if isinstance(o, Slash)]
    assert len(slash) == 1 and slash[0].signer == leader.address


def test_machine_rejects_invalid_votes_and_qcs():
    ms, checkers = machines()
    m = ms[0]
    m.on_job(JOB, PROVIDERS, 0)
    v = sign_assign_vote(IDS[1], DOMAIN, 42, 0, P1)
    assert m.on_vote(SignedAssignVote(42, 0, P2, v.signer, v.signature)) == []
    assert m.on_vote(sign_assign_vote(IDS[5], DOMAIN, 42, 0, P1)) == []  # not a checker
    assert m.on_vote(sign_assign_vote(IDS[1], Domain(1), 42, 0, P1)) == []  # other chain
    assert m.on_qc(AssignQC(42, 0, P1, (v.signature,) * 3)) == []  # duplicate signer
    assert m.rejected == 4


def test_ineligible_proposal_is_not_signed():
    ms, checkers = machines()
    leader = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    voter = next(m for m in ms if m.address != leader.address)
    voter.on_job(JOB, PROVIDERS, 0)
    stranger = "0x" + "ee" * 20
    out = voter.on_vote(sign_assign_vote(leader, DOMAIN, 42, 0, stranger))
    assert not [o for o in out if isinstance(o, Broadcast)]


def test_qc_lock_stops_signing():
    ms, checkers = machines()
    m = ms[0]
    m.on_job(JOB, PROVIDERS, 0)
    sigs = tuple(sign_assign_vote(i, DOMAIN, 42, 3, P2).signature for i in IDS[:3])
    out = m.on_qc(AssignQC(42, 3, P2, sigs))
    assert [type(o) for o in out] == [Broadcast, Decided]
    lead = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 4))
    later = m.on_vote(sign_assign_vote(lead, DOMAIN, 42, 4, P2))
    assert not [o for o in later if isinstance(o, Broadcast)]


# persistence ---------------------------------------------------------------------------------


def test_store_refuses_conflicts_and_survives_reopen(tmp_path):
    path = tmp_path / "votes.sqlite"
    s = VoteStore.open(path)
    s.record_assign_vote(42, 0, P1, b"\x01" * 65)
    s.record_assign_vote(42, 0, P1, b"\x01" * 65)  # idempotent
    with pytest.raises(VoteConflict):
        s.record_assign_vote(42, 0, P2, b"\x02" * 65)
    s.record_assign_vote(42, 2, P1, b"\x03" * 65)
    s.record_popw_vote(3, P1, 1, b"A" * 32, b"\x04" * 65)
    with pytest.raises(VoteConflict):
        s.record_popw_vote(3, P1, 2, b"A" * 32, b"\x05" * 65)
    s.record_assign_qc_seen(43, P2)
    s.close()
    s = VoteStore.open(path)
    lock = s.assign_lock(42)
    assert (lock.provider, lock.round, lock.signed_rounds, lock.qc_seen) == (P1, 2, {0, 2}, False)
    assert s.assign_lock(43).qc_seen and s.assign_lock(44) == rules.NO_LOCK
    assert s.popw_vote(3, P1) == (1, b"A" * 32, b"\x04" * 65)
    assert s.popw_vote(4, P1) is None
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_store_big_job_ids():
    s = VoteStore.open(":memory:")
    big = 2**256 - 1
    s.record_assign_vote(big, 0, P1, b"\x01" * 65)
    assert s.assign_lock(big).provider == P1
    assert s.assign_lock(big - 1).provider is None


def test_restarted_checker_never_signs_against_its_earlier_vote(tmp_path):
    """Vote P1 in round 0, crash, restart: a round-0 proposal for P2 and a round-1
    proposal for P2 are both refused; the old vote is re-sent unchanged."""
    path = tmp_path / "c.sqlite"
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0 = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    me = next(
        i for i in IDS[:4] if i.address not in (leader0.address, rules.get_leader(checkers, 42, 1))
    )
    m = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    m.on_job(JOB, PROVIDERS, 0)
    first = [
        o.message
        for o in m.on_vote(sign_assign_vote(leader0, DOMAIN, 42, 0, P1))
        if isinstance(o, Broadcast)
    ]
    assert [v.provider for v in first] == [P1]
    m.store.close()

    m2 = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    resent = [o.message for o in m2.on_job(JOB, PROVIDERS, 0) if isinstance(o, Broadcast)]
    assert resent == first  # same signature, not a new vote
    assert not [
        o
        for o in m2.on_vote(sign_assign_vote(leader0, DOMAIN, 42, 0, P2))
        if isinstance(o, Broadcast) and o.message.signer == me.address
    ]
    leader1 = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 1))
    m2.on_timeout(42, 0)
    out = m2.on_vote(sign_assign_vote(leader1, DOMAIN, 42, 1, P2))
    assert not [o for o in out if isinstance(o, Broadcast) and o.message.signer == me.address]
    fresh = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    fresh.on_job(JOB, PROVIDERS, 0)
    fresh.on_timeout(42, 0)
    out = fresh.on_vote(sign_assign_vote(leader1, DOMAIN, 42, 1, P1))  # the locked provider
    assert [o.message.provider for o in out if isinstance(o, Broadcast)] == [P1]


def test_vote_is_recorded_before_it_is_returned(tmp_path):
    """If the store refuses (disk full, conflict), no signature leaves the machine."""
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0 = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    me = next(i for i in IDS[:4] if i.address != leader0.address)

    class FailingStore(VoteStore):
        def record_assign_vote(self, *a, **k):
            raise OSError("disk full")

    m = AssignmentMachine(me, DOMAIN, checkers, FailingStore(":memory:"))
    m.on_job(JOB, PROVIDERS, 0)
    with pytest.raises(OSError):
        m.on_vote(sign_assign_vote(leader0, DOMAIN, 42, 0, P1))
    assert m.jobs[42].lock.provider is None


@given(st.randoms(use_true_random=False), st.integers(0, 5))
@settings(max_examples=40, deadline=None)
def test_any_delivery_order_gives_one_provider(rnd, job_id):
    """3 honest machines + a Byzantine checker that signs every provider in rounds 0-2,
    messages delivered in an arbitrary order with arbitrary drops and timeouts: every
    decision names the same provider."""
    ms, checkers = machines(4)
    byz = ms[3].identity
    honest = ms[:3]
    queue: list[tuple[int, object]] = []
    for r in range(3):
        for p in (P1, P2, P3):
            v = sign_assign_vote(byz, DOMAIN, job_id, r, p)
            queue += [(k, v) for k in range(3)]
    decisions = set()

    def push(k, outs):
        for o in outs:
            if isinstance(o, Broadcast):
                queue.extend((j, o.message) for j in range(3) if j != k)
            elif isinstance(o, Decided):
                decisions.add(o.qc.provider)
                assert is_valid_assign_qc(DOMAIN, checkers, o.qc)

    for k, m in enumerate(honest):
        push(k, m.on_job(JobSpec(job_id, "A100", 1, 1000), PROVIDERS, 0))
    steps = 0
    while queue and steps < 400:
        steps += 1
        k, msg = queue.pop(rnd.randrange(len(queue)))
        if rnd.random() < 0.2:
            continue  # dropped
        m = honest[k]
        push(k, m.on_vote(msg) if isinstance(msg, SignedAssignVote) else m.on_qc(msg))
        if rnd.random() < 0.1:  # somebody's round timer fires
            j = rnd.randrange(3)
            job = honest[j].jobs.get(job_id)
            if job is not None:
                push(j, honest[j].on_timeout(job_id, job.round))
    assert len(decisions) <= 1


def test_vouching_and_adoption():
    a, b, c, d = CHECKERS.addresses
    votes = {0: {a: {P1}}, 1: {b: {P2}, c: {P2}}}
    assert not rules.is_vouched(P1, votes, CHECKERS)  # 1 of 4 < 1/3
    assert rules.is_vouched(P2, votes, CHECKERS)  # 2 of 4
    assert rules.adopted_provider(votes, CHECKERS, 42) == P2
    assert rules.adopted_provider({}, CHECKERS, 42) is None
    # latest vote per signer counts: a moved to P2 in round 2
    assert rules.adopted_provider({0: {a: {P1}}, 2: {a: {P3}}}, CHECKERS, 42) == P3
    votes2 = {0: {a: {P1}, b: {P1}, c: {P1}}, 2: {a: {P3}}}
    assert rules.adopted_provider(votes2, CHECKERS, 42) == P1  # b, c for P1 vs a for P3
    tie = min((P1, P3), key=lambda p: rules.leader_rank(42, p))
    assert rules.adopted_provider({0: {a: {P1}, b: {P3}}}, CHECKERS, 42) == tie
    assert rules.proposal_for(rules.NO_LOCK, False, P1, P2) == P2
    locked = rules.record_own_vote(rules.NO_LOCK, 0, P3)
    assert rules.proposal_for(locked, False, P1, P2) == P3


def test_stale_view_follows_vouched_provider():
    """A voter that thinks P1 is full refuses the proposal, then signs it once checkers
    with >= 1/3 of stake have (so stale capacity views do not split the vote)."""
    ms, checkers = machines()
    leader = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    voter = next(m for m in ms if m.address != leader.address)
    stale = (ProviderInfo(P1, "A100", 0, 100, 0),) + PROVIDERS[1:]
    voter.on_job(JOB, stale, 0)
    out = voter.on_vote(sign_assign_vote(leader, DOMAIN, 42, 0, P1))
    assert not [o for o in out if isinstance(o, Broadcast)]
    other = next(i for i in IDS[:4] if i.address not in (leader.address, voter.address))
    out = voter.on_vote(sign_assign_vote(other, DOMAIN, 42, 0, P1))
    assert [o.message.provider for o in out if isinstance(o, Broadcast)][:1] == [P1]


def test_forget_drops_state_but_not_the_lock(tmp_path):
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0 = next(i for i in IDS[:4] if i.address == rules.get_leader(checkers, 42, 0))
    me = next(i for i in IDS[:4] if i.address != leader0.address)
    m = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(tmp_path / "s.sqlite"))
    m.on_job(JOB, PROVIDERS, 0)
    m.on_vote(sign_assign_vote(leader0, DOMAIN, 42, 0, P1))
    m.forget(42)
    assert 42 not in m.jobs and not m.evidence.assign_seen
    out = m.on_vote(sign_assign_vote(leader0, DOMAIN, 42, 0, P2))
    assert not [o for o in out if isinstance(o, Broadcast)]
    assert m.jobs[42].lock.provider == P1  # reloaded from the store
