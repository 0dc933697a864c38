"""Assignment rounds: leader rotation, timeouts, the prevote/precommit rules, the state machine."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus import assignment as rules
from node.consensus.checkers import make_checker_set
from node.consensus.machine import (
    AssignmentMachine,
    Broadcast,
    Decided,
    Send,
    Slash,
    StartTimer,
)
from node.consensus.qc import (
    AssignQC,
    PrepareQC,
    Proposal,
    SignedAssignVote,
    SignedPrevote,
    is_valid_assign_qc,
    sign_assign_vote,
    sign_prevote,
)
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.store import VoteConflict, VoteStore
from node.eip712 import Domain
from node.identity import Identity

DOMAIN = Domain(chain_id=31337)
IDS = [Identity(keccak(f"machine-test-{i}".encode())) for i in range(10)]
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


def test_propose_wait_only_after_round_0():
    assert rules.propose_wait(0, 1.0) == 0.0
    assert rules.propose_wait(1, 1.0) == 2.0 / rules.PROPOSE_WAIT_DIVISOR


# the vote rules ---------------------------------------------------------------------------


def test_prevote_rule():
    lock = rules.NO_LOCK
    assert rules.may_prevote(lock, 0, P1)
    lock = rules.record_prevote(lock, 0)
    # at most one prevote per (job, round), even for the same provider
    assert not rules.may_prevote(lock, 0, P1)
    assert rules.may_prevote(lock, 1, P2)  # a prevote alone does not lock
    lock = rules.record_precommit(lock, 1, P1)  # locked on (P1, round 1)
    assert not rules.may_prevote(lock, 1, P1)  # no prevote after precommitting in a round
    # later rounds: only the locked provider...
    assert rules.may_prevote(lock, 2, P1)
    assert not rules.may_prevote(lock, 2, P2)
    # ...unless justified by a polka from the lock's round or later (and before this round)
    assert not rules.may_prevote(lock, 3, P2, justify_round=0)
    assert rules.may_prevote(lock, 3, P2, justify_round=1)
    assert rules.may_prevote(lock, 3, P2, justify_round=2)
    assert not rules.may_prevote(lock, 3, P2, justify_round=3)
    # rounds only go forward
    later = rules.record_prevote(lock, 5)
    assert not rules.may_prevote(later, 4, P1)
    # after a QC: nothing at all
    assert not rules.may_prevote(rules.record_qc_seen(lock), 2, P1)


def test_precommit_rule_and_lock():
    lock = rules.record_prevote(rules.NO_LOCK, 0)
    assert rules.may_precommit(lock, 0)
    lock = rules.record_precommit(lock, 0, P1)
    assert (lock.provider, lock.round, lock.last_round) == (P1, 0, 0)
    assert not rules.may_precommit(lock, 0)  # one precommit per round
    assert rules.may_precommit(lock, 2)
    lock = rules.record_prevote(lock, 3)
    assert not rules.may_precommit(lock, 2)  # not below a round already prevoted in
    assert rules.may_precommit(lock, 3)
    lock = rules.record_precommit(lock, 3, P2)
    assert (lock.provider, lock.round) == (P2, 3)  # the lock moves to the later polka
    assert not rules.may_precommit(rules.record_qc_seen(lock), 4)


def test_proposal_rule():
    assert rules.proposal_for(P2, P1) == P2  # the highest polka's provider
    assert rules.proposal_for(None, P1) == P1  # else the scheduler's choice
    q1, q3 = PrepareQC(42, 1, P1, ()), PrepareQC(42, 3, P2, ())
    assert rules.higher_justify(q1, q3) is q3 and rules.higher_justify(q3, q1) is q3
    assert rules.higher_justify(None, q1) is q1 and rules.higher_justify(q1, None) is q1


# the machine ------------------------------------------------------------------------------


def machines(n=4, stores=None):
    checkers = make_checker_set((i.address, 1) for i in IDS[:n])
    return [
        AssignmentMachine(IDS[k], DOMAIN, checkers, stores[k] if stores else None, timeout_base=1.0)
        for k in range(n)
    ], checkers


def run_net(ms, inputs, drop=lambda src, dst, msg: False):
    """Deliver Broadcasts to every other machine and Sends to their addressee until quiet.
    Returns the outputs of each machine."""
    by_addr = {m.address: k for k, m in enumerate(ms)}
    log: list[list] = [[] for _ in ms]
    queue = list(inputs)
    while queue:
        k, outs = queue.pop(0)
        log[k] += outs
        for o in outs:
            if isinstance(o, Broadcast):
                targets = [j for j in range(len(ms)) if j != k]
            elif isinstance(o, Send):
                targets = [by_addr[o.to]]
            else:
                continue
            for j in targets:
                if not drop(k, j, o.message):
                    queue.append((j, ms[j].on_message(o.message)))
    return log


def decided(log):
    return [o.qc for o in log if isinstance(o, Decided)]


def identity_of(checkers, job_id, round_):
    return next(i for i in IDS if i.address == rules.get_leader(checkers, job_id, round_))


def test_four_honest_machines_decide_the_scheduled_provider_in_round_0():
    ms, checkers = machines()
    log = run_net(ms, [(k, m.on_job(JOB, PROVIDERS, 0)) for k, m in enumerate(ms)])
    for k, m in enumerate(ms):
        qcs = decided(log[k])
        assert len(qcs) == 1 and qcs[0].provider == P1 and qcs[0].round == 0
        assert is_valid_assign_qc(DOMAIN, checkers, qcs[0])
        assert m.decided(42) == qcs[0]
        assert any(isinstance(o, StartTimer) and o.round == 0 for o in log[k])


@pytest.mark.parametrize("n", [4, 7, 10])
def test_messages_per_decision_are_linear(n):
    """Votes go to the leader only: one proposal, n - 1 prevotes, one PrepareQC, n - 1
    precommits, one AssignQC: 2n + 1 messages."""
    ms, _ = machines(n)
    log = run_net(ms, [(k, m.on_job(JOB, PROVIDERS, 0)) for k, m in enumerate(ms)])
    sends = [o for outs in log for o in outs if isinstance(o, Send)]
    leader = rules.get_leader(ms[0].checkers, 42, 0)
    assert len(sends) == 2 * (n - 1) and all(o.to == leader for o in sends)
    proposals = [o for outs in log for o in outs if isinstance(o, Broadcast)]
    kinds = sorted(type(o.message).__name__ for o in proposals)
    # the leader's Proposal, PrepareQC and AssignQC; receivers re-announce the AssignQC
    # locally (the engine does not republish a QC that arrived by gossip)
    assert kinds.count("Proposal") == 1 and kinds.count("PrepareQC") == 1


def test_leader_crash_moves_to_next_leader_on_timeout():
    ms, checkers = machines()
    leader0 = rules.get_leader(checkers, 42, 0)
    alive = [k for k, m in enumerate(ms) if m.address != leader0]
    down = lambda s, d, m: ms[d].address == leader0  # noqa: E731
    log = run_net(ms, [(k, ms[k].on_job(JOB, PROVIDERS, 0)) for k in alive], drop=down)
    assert not any(decided(log[k]) for k in alive)
    log = run_net(ms, [(k, ms[k].on_timeout(42, 0)) for k in alive], drop=down)
    leader1 = next(k for k in alive if ms[k].address == rules.get_leader(checkers, 42, 1))
    waits = [o for o in log[leader1] if isinstance(o, StartTimer) and o.propose]
    assert [w.seconds for w in waits] == [rules.propose_wait(1, 1.0)]  # waits for new views
    log = run_net(ms, [(leader1, ms[leader1].on_propose_timeout(42, 1))], drop=down)
    for k in alive:
        qc = decided(log[k])[0]
        assert (qc.round, qc.provider) == (1, P1)
    assert ms[alive[0]].on_timeout(42, 1) == []  # decided: no more rounds


def test_a_checker_behind_skips_to_the_round_over_a_third_of_stake_proposed_in():
    """A restarted or paused checker is rounds behind and round timeouts run at one pace
    once capped: it skips ahead when leaders with > 1/3 of stake proposed in later
    rounds (then takes the next round's stored proposal too), never on one leader alone."""
    ms, checkers = machines()
    order = rules.get_leader_order(checkers, 42)
    m = next(x for x in ms if x.address == order[2])  # leads neither round 4 nor round 5
    lead4, lead5 = identity_of(checkers, 42, 4), identity_of(checkers, 42, 5)
    m.on_job(JOB, PROVIDERS, 0)
    # one leader (1/4 of stake, may be Byzantine) far ahead: stay
    assert m.on_proposal(Proposal(sign_prevote(lead5, DOMAIN, 42, 5, P1))) == []
    assert m.jobs[42].round == 0
    # a second leader: 2/4 > 1/3 of stake is in rounds >= 4, so an honest checker is there
    out = m.on_proposal(Proposal(sign_prevote(lead4, DOMAIN, 42, 4, P1)))
    assert m.jobs[42].round == 5
    sent = [(o.to, o.message.round) for o in out if isinstance(o, Send)]
    assert sent == [(lead4.address, 4), (lead5.address, 5)]
    assert {o.round for o in out if isinstance(o, StartTimer)} == {4, 5}


def test_a_restarted_checker_skips_rounds_on_proposals_heard_before_its_job_started():
    ms, checkers = machines()
    order = rules.get_leader_order(checkers, 42)
    m = next(x for x in ms if x.address == order[0])
    for r in (6, 7):
        m.on_proposal(Proposal(sign_prevote(identity_of(checkers, 42, r), DOMAIN, 42, r, P1)))
    m.on_job(JOB, PROVIDERS, 0)
    assert m.jobs[42].round == 7


def test_stale_timeout_is_ignored():
    ms, _ = machines()
    ms[0].on_job(JOB, PROVIDERS, 0)
    assert ms[0].on_timeout(42, 5) == []
    assert ms[0].on_timeout(7, 0) == []
    assert ms[0].on_propose_timeout(42, 3) == []


def test_second_proposal_in_a_round_is_not_prevoted():
    ms, checkers = machines()
    leader = identity_of(checkers, 42, 0)
    voter = next(m for m in ms if m.address != leader.address)
    voter.on_job(JOB, PROVIDERS, 0)
    out_a = voter.on_proposal(Proposal(sign_prevote(leader, DOMAIN, 42, 0, P1)))
    assert [(o.to, o.message.provider) for o in out_a if isinstance(o, Send)] == [
        (leader.address, P1)
    ]
    out_b = voter.on_proposal(Proposal(sign_prevote(leader, DOMAIN, 42, 0, P2)))
    assert out_b == [] and voter.equivocating_proposals == 1


def test_equivocating_precommits_give_evidence():
    ms, checkers = machines()
    m = ms[0]
    m.on_job(JOB, PROVIDERS, 0)
    m.on_vote(sign_assign_vote(IDS[2], DOMAIN, 42, 0, P1))
    out = m.on_vote(sign_assign_vote(IDS[2], DOMAIN, 42, 0, P2))
    slash = [o.evidence for o in out if isinstance(o, Slash)]
    assert len(slash) == 1 and slash[0].signer == IDS[2].address


def test_machine_rejects_invalid_messages():
    ms, checkers = machines()
    m = ms[0]
    m.on_job(JOB, PROVIDERS, 0)
    v = sign_assign_vote(IDS[1], DOMAIN, 42, 0, P1)
    pv = sign_prevote(IDS[1], DOMAIN, 42, 0, P1)
    leader = identity_of(checkers, 42, 1)
    other = next(i for i in IDS[:4] if i.address != leader.address)
    bad = [
        SignedAssignVote(42, 0, P2, v.signer, v.signature),  # relabelled provider
        sign_assign_vote(IDS[9], DOMAIN, 42, 0, P1),  # not a checker
        sign_assign_vote(IDS[1], Domain(1), 42, 0, P1),  # other chain
        SignedAssignVote(42, 0, P1, v.signer, pv.signature),  # a prevote posing as precommit
        SignedPrevote(42, 0, P1, v.signer, v.signature),  # a precommit posing as prevote
        AssignQC(42, 0, P1, (v.signature,) * 3),  # duplicate signer
        PrepareQC(42, 0, P1, (pv.signature,) * 3),  # duplicate signer
        Proposal(sign_prevote(other, DOMAIN, 42, 1, P1)),  # not the round's leader
        Proposal(  # justified by a polka of another provider
            sign_prevote(leader, DOMAIN, 42, 1, P2),
            PrepareQC(
                42, 0, P1, tuple(sign_prevote(i, DOMAIN, 42, 0, P1).signature for i in IDS[:3])
            ),
        ),
    ]
    for msg in bad:
        assert m.on_message(msg) == []
    assert m.rejected == len(bad)


def test_ineligible_proposal_is_not_prevoted_unless_justified():
    """A voter whose (stale) view says P1 is full refuses an unjustified proposal for P1,
    and prevotes it once it carries a polka: >= 2/3 of stake found P1 eligible."""
    ms, checkers = machines()
    leader = identity_of(checkers, 42, 1)
    voter = next(m for m in ms if m.address != leader.address)
    stale = (ProviderInfo(P1, "A100", 0, 100, 0),) + PROVIDERS[1:]
    voter.on_job(JOB, stale, 0)
    voter.on_timeout(42, 0)
    assert voter.on_proposal(Proposal(sign_prevote(leader, DOMAIN, 42, 1, P1))) == []
    voter.jobs[42].proposals.clear()
    polka = PrepareQC(
        42, 0, P1, tuple(sign_prevote(i, DOMAIN, 42, 0, P1).signature for i in IDS[:3])
    )
    out = voter.on_proposal(Proposal(sign_prevote(leader, DOMAIN, 42, 1, P1), polka))
    assert [o.message.provider for o in out if isinstance(o, Send)] == [P1]


def test_qc_lock_stops_signing():
    ms, checkers = machines()
    m = ms[0]
    m.on_job(JOB, PROVIDERS, 0)
    sigs = tuple(sign_assign_vote(i, DOMAIN, 42, 3, P2).signature for i in IDS[:3])
    out = m.on_qc(AssignQC(42, 3, P2, sigs))
    assert [type(o) for o in out] == [Broadcast, Decided]
    lead = identity_of(checkers, 42, 4)
    assert m.on_proposal(Proposal(sign_prevote(lead, DOMAIN, 42, 4, P2))) == []
    polka = PrepareQC(
        42, 4, P2, tuple(sign_prevote(i, DOMAIN, 42, 4, P2).signature for i in IDS[:3])
    )
    assert not [o for o in m.on_prepare_qc(polka) if isinstance(o, Send)]


def polka(job_id, round_, provider, signers=IDS[:3]):
    sigs = tuple(sign_prevote(i, DOMAIN, job_id, round_, provider).signature for i in signers)
    return PrepareQC(job_id, round_, provider, sigs)


def test_locked_checker_switches_only_on_a_later_polka():
    """The split that stalled the one-step protocol: a checker locked on P1 (a polka shown
    to it alone by a Byzantine leader) refuses an unjustified P2, and follows P2 once a
    proposal carries a polka for P2 from its lock round or later."""
    ms, checkers = machines()
    job = JobSpec(9, "A100", 1, 1000)
    me = next(
        m for m in ms if m.address not in {rules.get_leader(checkers, 9, r) for r in (0, 2, 3)}
    )
    me.on_job(job, PROVIDERS, 0)
    out = me.on_prepare_qc(polka(9, 0, P1))
    assert [(type(o.message), o.message.provider) for o in out if isinstance(o, Send)] == [
        (SignedAssignVote, P1)
    ]
    me.on_timeout(9, 0), me.on_timeout(9, 1)
    lead2, lead3 = identity_of(checkers, 9, 2), identity_of(checkers, 9, 3)
    assert me.on_proposal(Proposal(sign_prevote(lead2, DOMAIN, 9, 2, P2))) == []
    me.on_timeout(9, 2)
    old = polka(9, 0, P2, IDS[1:4])  # a polka older than nothing: same round as my lock
    out = me.on_proposal(Proposal(sign_prevote(lead3, DOMAIN, 9, 3, P2), old))
    assert [o.message.provider for o in out if isinstance(o, Send)] == [P2]


def test_timeout_hands_the_highest_polka_to_the_next_leader():
    ms, checkers = machines()
    leader1 = rules.get_leader(checkers, 42, 1)
    me = next(m for m in ms if m.address not in (leader1, rules.get_leader(checkers, 42, 0)))
    me.on_job(JOB, PROVIDERS, 0)
    q = polka(42, 0, P2)
    me.on_prepare_qc(q)
    out = me.on_timeout(42, 0)
    assert [o for o in out if isinstance(o, Send)] == [Send(leader1, q)]
    # the next leader proposes the polka's provider with it as justification
    lead = next(m for m in ms if m.address == leader1)
    lead.on_job(JOB, PROVIDERS, 0)
    lead.on_timeout(42, 0)
    lead.on_message(q)
    props = [o.message for o in lead.on_propose_timeout(42, 1) if isinstance(o, Broadcast)]
    assert props[0].provider == P2 and props[0].justify == q


# persistence ---------------------------------------------------------------------------------


def test_store_refuses_conflicts_and_survives_reopen(tmp_path):
    path = tmp_path / "votes.sqlite"
    s = VoteStore.open(path)
    s.record_assign_vote(42, 0, P1, b"\x01" * 65)
    s.record_assign_vote(42, 0, P1, b"\x01" * 65)  # idempotent
    with pytest.raises(VoteConflict):
        s.record_assign_vote(42, 0, P2, b"\x02" * 65)
    s.record_assign_prevote(42, 3, P2, b"\x06" * 65)
    with pytest.raises(VoteConflict):
        s.record_assign_prevote(42, 3, P1, b"\x07" * 65)
    s.record_assign_vote(42, 2, P1, b"\x03" * 65)
    s.record_popw_vote(3, P1, 1, b"A" * 32, b"\x04" * 65)
    with pytest.raises(VoteConflict):
        s.record_popw_vote(3, P1, 2, b"A" * 32, b"\x05" * 65)
    s.record_assign_qc_seen(43, P2)
    s.close()
    s = VoteStore.open(path)
    lock = s.assign_lock(42)
    assert (lock.provider, lock.round, lock.precommitted, lock.prevoted, lock.qc_seen) == (
        P1, 2, {0, 2}, {3}, False
    )  # fmt: skip
    assert lock.last_round == 3
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


def test_restarted_checker_never_signs_against_its_earlier_votes(tmp_path):
    """Prevote and precommit P1 in round 0, crash, restart: a second round-0 proposal is
    not prevoted, the precommit is re-sent unchanged, and a round-1 proposal for P2
    without a justifying polka is refused while P1 is prevoted."""
    path = tmp_path / "c.sqlite"
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0, leader1 = identity_of(checkers, 42, 0), identity_of(checkers, 42, 1)
    me = next(i for i in IDS[:4] if i.address not in (leader0.address, leader1.address))
    m = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    m.on_job(JOB, PROVIDERS, 0)
    m.on_proposal(Proposal(sign_prevote(leader0, DOMAIN, 42, 0, P1)))
    first = [o for o in m.on_prepare_qc(polka(42, 0, P1)) if isinstance(o, Send)]
    assert [o.message.provider for o in first] == [P1]
    m.store.close()

    m2 = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    resent = [o for o in m2.on_job(JOB, PROVIDERS, 0) if isinstance(o, Send)]
    assert resent == first  # same signature, not a new vote
    assert m2.on_proposal(Proposal(sign_prevote(leader0, DOMAIN, 42, 0, P2))) == []
    m2.on_timeout(42, 0)
    assert not [
        o
        for o in m2.on_proposal(Proposal(sign_prevote(leader1, DOMAIN, 42, 1, P2)))
        if isinstance(o, Send)
    ]
    fresh = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(path))
    fresh.on_job(JOB, PROVIDERS, 0)
    fresh.on_timeout(42, 0)
    out = fresh.on_proposal(Proposal(sign_prevote(leader1, DOMAIN, 42, 1, P1)))
    assert [o.message.provider for o in out if isinstance(o, Send)] == [P1]


def test_votes_are_recorded_before_they_are_returned(tmp_path):
    """If the store refuses (disk full, conflict), no signature leaves the machine."""
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0 = identity_of(checkers, 42, 0)
    me = next(i for i in IDS[:4] if i.address != leader0.address)

    class FailingStore(VoteStore):
        def record_assign_prevote(self, *a, **k):
            raise OSError("disk full")

        def record_assign_vote(self, *a, **k):
            raise OSError("disk full")

    m = AssignmentMachine(me, DOMAIN, checkers, FailingStore(":memory:"))
    m.on_job(JOB, PROVIDERS, 0)
    with pytest.raises(OSError):
        m.on_proposal(Proposal(sign_prevote(leader0, DOMAIN, 42, 0, P1)))
    assert m.jobs[42].lock.prevoted == frozenset()
    with pytest.raises(OSError):
        m.on_prepare_qc(polka(42, 0, P1))
    assert m.jobs[42].lock.provider is None


@given(st.randoms(use_true_random=False), st.integers(0, 5))
@settings(max_examples=40, deadline=None)
def test_any_delivery_order_gives_one_provider(rnd, job_id):
    """3 honest machines + a Byzantine checker that prevotes and precommits every provider
    in rounds 0-3 to everyone, messages delivered in an arbitrary order with arbitrary
    drops and timer firings: every decision names the same provider."""
    ms, checkers = machines(4)
    byz = ms[3].identity
    honest = ms[:3]
    queue: list[tuple[int, object]] = []
    for r in range(4):
        for p in (P1, P2, P3):
            for v in (
                sign_prevote(byz, DOMAIN, job_id, r, p),
                sign_assign_vote(byz, DOMAIN, job_id, r, p),
            ):
                queue += [(k, v) for k in range(3)]
            if rules.get_leader(checkers, job_id, r) == byz.address:
                queue += [(k, Proposal(sign_prevote(byz, DOMAIN, job_id, r, p))) for k in range(3)]
    by_addr = {m.address: k for k, m in enumerate(honest)}
    decisions = set()

    def push(k, outs):
        for o in outs:
            if isinstance(o, Broadcast):
                queue.extend((j, o.message) for j in range(3) if j != k)
            elif isinstance(o, Send) and o.to in by_addr:
                queue.append((by_addr[o.to], o.message))
            elif isinstance(o, Decided):
                decisions.add(o.qc.provider)
                assert is_valid_assign_qc(DOMAIN, checkers, o.qc)

    for k, m in enumerate(honest):
        push(k, m.on_job(JobSpec(job_id, "A100", 1, 1000), PROVIDERS, 0))
    steps = 0
    while queue and steps < 600:
        steps += 1
        k, msg = queue.pop(rnd.randrange(len(queue)))
        if rnd.random() < 0.2:
            continue  # dropped
        push(k, honest[k].on_message(msg))
        if rnd.random() < 0.1:  # somebody's round or propose timer fires
            j = rnd.randrange(3)
            job = honest[j].jobs.get(job_id)
            if job is not None:
                push(j, honest[j].on_timeout(job_id, job.round))
                push(j, honest[j].on_propose_timeout(job_id, job.round))
    assert len(decisions) <= 1


def test_start_job_at_a_reopened_round():
    ms, checkers = machines()
    m = ms[0]
    out = m.start_job(JOB, PROVIDERS, 0, first_round=5)
    assert m.jobs[42].round == 5
    assert [o.round for o in out if isinstance(o, StartTimer) and not o.propose] == [5]
    assert m.start_job(JOB, PROVIDERS, 0, first_round=9) == []  # idempotent


def test_forget_drops_state_but_not_the_lock(tmp_path):
    checkers = make_checker_set((i.address, 1) for i in IDS[:4])
    leader0 = identity_of(checkers, 42, 0)
    me = next(i for i in IDS[:4] if i.address != leader0.address)
    m = AssignmentMachine(me, DOMAIN, checkers, VoteStore.open(tmp_path / "s.sqlite"))
    m.on_job(JOB, PROVIDERS, 0)
    m.on_proposal(Proposal(sign_prevote(leader0, DOMAIN, 42, 0, P1)))
    m.on_prepare_qc(polka(42, 0, P1))
    m.on_vote(sign_assign_vote(IDS[3], DOMAIN, 42, 0, P1))
    m.forget(42)
    assert 42 not in m.jobs and not m.evidence.assign_seen
    assert m.on_proposal(Proposal(sign_prevote(leader0, DOMAIN, 42, 0, P2))) == []
    assert m.jobs[42].lock.provider == P1  # reloaded from the store
