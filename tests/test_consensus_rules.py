"""Pure rules of node/consensus: checker set, epochs, committees, quorum, QCs, scheduler, evidence."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus import committees, epochs, qc
from node.consensus.checkers import (
    ChainCheckerRecord,
    CheckerSetError,
    checker_set_from_chain,
    checker_set_from_genesis,
    make_checker_set,
)
from node.consensus.evidence import (
    KIND_ASSIGN,
    KIND_POPW,
    EvidencePool,
    assign_evidence,
    verify_evidence,
)
from node.consensus.qc import (
    AssignQC,
    InvalidVote,
    PrepareQC,
    SignedAssignVote,
    build_popw_qc,
    build_round_qc,
    has_quorum,
    is_valid_assign_qc,
    is_valid_popw_qc,
    sign_assign_vote,
    sign_popw_vote,
    sign_prevote,
    verify_assign_vote,
    verify_round_qc,
    verify_round_vote,
)
from node.consensus.scheduler import (
    JobSpec,
    ProviderInfo,
    choose_provider,
    eligible_providers,
    has_popw_standing,
    tie_break,
)
from node.consensus.votes import VERDICT_FAIL, VERDICT_PASS, gpu_class_id
from node.eip712 import Domain
from node.identity import Identity

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "11" * 20)
IDS = [Identity(keccak(f"rules-test-{i}".encode())) for i in range(8)]
PROVIDER = "0x" + "aa" * 20
OTHER = "0x" + "bb" * 20


def cset(stakes):
    return make_checker_set((IDS[i].address, s) for i, s in enumerate(stakes))


def sigs(who, job=1, rnd=0, provider=PROVIDER, domain=DOMAIN, sign=sign_assign_vote):
    return tuple(sign(IDS[i], domain, job, rnd, provider).signature for i in who)


# checker set ---------------------------------------------------------------------


def test_checker_set_sorted_and_weighted():
    s = cset([5, 1, 3])
    assert list(s.addresses) == sorted(s.addresses, key=str.lower)
    assert s.total_stake == 9
    assert s.stake_of(IDS[0].address) == 5
    assert s.stake_of(IDS[7].address) == 0
    assert s.stake_of_all([IDS[0].address, IDS[0].address]) == 5  # duplicates count once


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [(IDS[0].address, 1), (IDS[0].address.lower(), 2)],  # same checker twice
        [(IDS[0].address, 0)],  # no stake
        [(IDS[0].address, True)],  # bool is not a stake
        [("0x1234", 1)],  # bad address
    ],
)
def test_checker_set_rejects(entries):
    with pytest.raises(CheckerSetError):
        make_checker_set(entries)


def test_checker_set_from_chain_applies_activity_rule():
    records = [
        ChainCheckerRecord(IDS[0].address, 10, True, True),
        ChainCheckerRecord(IDS[1].address, 10, False, True),  # no license
        ChainCheckerRecord(IDS[2].address, 10, True, False),  # no node key
        ChainCheckerRecord(IDS[3].address, 4, True, True),  # below minimum
    ]
    s = checker_set_from_chain(records, min_stake=5)
    assert s.addresses == (IDS[0].address,)


def test_checker_set_from_genesis():
    s = checker_set_from_genesis([{"address": IDS[0].address.lower(), "stake": 3}])
    assert s.addresses == (IDS[0].address,)
    with pytest.raises(CheckerSetError):
        checker_set_from_genesis([{"address": IDS[0].address}])


# epochs and committees --------------------------------------------------------------


def test_epochs():
    assert epochs.epoch_at_time(1000, 999, 600) == 0
    assert epochs.epoch_at_time(1000, 1599, 600) == 0
    assert epochs.epoch_at_time(1000, 1600, 600) == 1
    assert epochs.epoch_at_block(99, 50) == 1
    assert epochs.epoch_start_block(2, 50) == 100
    assert epochs.epoch_seed(1, b"\x00" * 32) != epochs.epoch_seed(2, b"\x00" * 32)
    assert epochs.seed_chain(3) == epochs.epoch_seed(3, epochs.seed_chain(2))
    with pytest.raises(ValueError):
        epochs.epoch_seed(1, b"short")


def test_committee_is_deterministic_and_seed_dependent():
    s = cset([1] * 8)
    c1 = committees.get_popw_committee(s, b"\x01" * 32, PROVIDER, size=4)
    assert c1 == committees.get_popw_committee(s, b"\x01" * 32, PROVIDER, size=4)
    assert len(c1) == 4 and all(a in s for a in c1.addresses)
    others = {
        committees.get_popw_committee(s, bytes([k]) * 32, PROVIDER, 4).addresses for k in range(8)
    }
    assert len(others) > 1  # the seed changes who checks
    assert len(committees.get_popw_committee(s, b"\x01" * 32, PROVIDER, size=20)) == 8
    ranked = sorted(s.addresses, key=lambda c: committees.committee_rank(b"\x01" * 32, PROVIDER, c))
    assert set(c1.addresses) == set(ranked[:4])


# quorum threshold -------------------------------------------------------------------


def test_quorum_boundary_exact():
    assert has_quorum(2, 3)
    assert not has_quorum(1, 3)
    assert has_quorum(20, 30) and not has_quorum(19, 30)
    assert has_quorum(67, 100) and not has_quorum(66, 100)
    assert not has_quorum(0, 0)


@given(st.integers(0, 10**30), st.integers(1, 10**30))
@settings(max_examples=300)
def test_quorum_matches_exact_fraction(signed, total):
    from fractions import Fraction

    assert has_quorum(signed, total) == (Fraction(signed, total) >= Fraction(2, 3))


def test_qc_unequal_stakes_boundary():
    # stakes 10, 7, 8, 12 (total 37): a quorum needs >= 24.67, i.e. 25.
    s = cset([10, 7, 8, 12])
    ok = AssignQC(1, 0, PROVIDER, sigs([0, 1, 2]))  # 25: exactly enough
    short = AssignQC(1, 0, PROVIDER, sigs([1, 3]))  # 19: too little
    big = AssignQC(1, 0, PROVIDER, sigs([0, 3, 2]))  # 30
    assert is_valid_assign_qc(DOMAIN, s, ok)
    assert is_valid_assign_qc(DOMAIN, s, big)
    assert not is_valid_assign_qc(DOMAIN, s, short)
    assert not is_valid_assign_qc(DOMAIN, s, AssignQC(1, 0, PROVIDER, sigs([0, 1, 3])[:2]))


QC_KINDS = [(AssignQC, sign_assign_vote), (PrepareQC, sign_prevote)]


@pytest.mark.parametrize("kind, sign", QC_KINDS)
@pytest.mark.parametrize(
    "who, changes, reason",
    [
        ([0, 1, 0], {}, "duplicate signer"),
        ([0, 1, 5], {}, "unknown signer"),
        ([0, 1, 2], {"domain": Domain(1)}, "unknown signer"),
        ([0, 1, 2], {"job": 2}, "unknown signer"),
        ([0, 1, 2], {"rnd": 1}, "unknown signer"),
        ([0, 1, 2], {"provider": OTHER}, "unknown signer"),
        ([0, 1], {}, "stake below quorum"),
    ],
)
def test_qc_rejects(kind, sign, who, changes, reason):
    s = cset([1, 1, 1, 1])
    with pytest.raises(InvalidVote, match=reason):
        verify_round_qc(DOMAIN, s, kind(1, 0, PROVIDER, sigs(who, sign=sign, **changes)))


@pytest.mark.parametrize("kind, sign", QC_KINDS)
@pytest.mark.parametrize("junk", [b"\x00" * 65, b"\x01" * 64])
def test_qc_rejects_malformed_signatures(kind, sign, junk):
    with pytest.raises(InvalidVote, match="malformed"):
        verify_round_qc(DOMAIN, cset([1, 1, 1, 1]), kind(1, 0, PROVIDER, sigs([0, 1], sign=sign) + (junk,)))


@pytest.mark.parametrize("kind, sign", QC_KINDS)
def test_qc_rejects_negative_job_or_round(kind, sign):
    good = sigs([0, 1, 2], sign=sign)
    for job, rnd in ((-1, 0), (1, -1)):
        with pytest.raises(InvalidVote, match="negative job or round"):
            verify_round_qc(DOMAIN, cset([1, 1, 1, 1]), kind(job, rnd, PROVIDER, good))


def test_qc_kinds_do_not_mix():
    # the struct is part of the digest: 3 of 4 prevotes are no AssignQC, and 3 of 4
    # AssignVotes no PrepareQC (each recovers to strangers)
    s = cset([1, 1, 1, 1])
    verify_round_qc(DOMAIN, s, PrepareQC(1, 0, PROVIDER, sigs([0, 1, 2], sign=sign_prevote)))
    verify_round_qc(DOMAIN, s, AssignQC(1, 0, PROVIDER, sigs([0, 1, 2])))
    with pytest.raises(InvalidVote, match="unknown signer"):
        verify_round_qc(DOMAIN, s, AssignQC(1, 0, PROVIDER, sigs([0, 1, 2], sign=sign_prevote)))
    with pytest.raises(InvalidVote, match="unknown signer"):
        verify_round_qc(DOMAIN, s, PrepareQC(1, 0, PROVIDER, sigs([0, 1, 2])))
    prevote = sign_prevote(IDS[0], DOMAIN, 1, 0, PROVIDER)
    as_vote = SignedAssignVote(1, 0, PROVIDER, prevote.signer, prevote.signature)
    with pytest.raises(InvalidVote, match="bad signature"):
        verify_round_vote(DOMAIN, s, as_vote)


@pytest.mark.parametrize("kind, sign", QC_KINDS)
def test_build_qc_needs_quorum_and_drops_bad_signatures(kind, sign):
    s = cset([1, 1, 1, 1])
    good = {IDS[i].address: sig for i, sig in zip([0, 1], sigs([0, 1], sign=sign), strict=True)}
    good[IDS[5].address] = sigs([5], sign=sign)[0]  # a stranger's valid signature
    assert build_round_qc(kind, DOMAIN, s, 1, 0, PROVIDER, good) is None
    good[IDS[2].address] = sigs([3], sign=sign)[0]  # signer label does not match the signature
    assert build_round_qc(kind, DOMAIN, s, 1, 0, PROVIDER, good) is None
    good[IDS[2].address] = sigs([2], sign=sign)[0]
    built = build_round_qc(kind, DOMAIN, s, 1, 0, PROVIDER, good)
    assert type(built) is kind and len(built.signatures) == 3
    verify_round_qc(DOMAIN, s, built)
    signers = [qc.recover_signer(built.digest(DOMAIN), x) for x in built.signatures]
    assert signers == sorted(signers, key=str.lower)  # ascending, as the contract wants


def test_vote_signer_must_match():
    s = cset([1, 1, 1, 1])
    v = sign_assign_vote(IDS[0], DOMAIN, 1, 0, PROVIDER)
    verify_assign_vote(DOMAIN, s, v)
    from dataclasses import replace

    for bad in (
        replace(v, signer=IDS[1].address),
        replace(v, provider=OTHER),
        replace(v, round=1),
        replace(v, job_id=2),
        replace(v, signature=b"\x00" * 65),
    ):
        with pytest.raises(InvalidVote):
            verify_assign_vote(DOMAIN, s, bad)
    with pytest.raises(InvalidVote):
        verify_assign_vote(Domain(1), s, v)  # replay on another chain
    outsider = sign_assign_vote(IDS[6], DOMAIN, 1, 0, PROVIDER)
    with pytest.raises(InvalidVote, match="not an active checker"):
        verify_assign_vote(DOMAIN, s, outsider)


def test_popw_qc_committee_epoch_and_verdict():
    committee = cset([3, 3, 2, 1])
    cls = gpu_class_id("A100")
    v = [sign_popw_vote(IDS[i], DOMAIN, 7, PROVIDER, VERDICT_PASS, cls) for i in range(4)]
    fail = sign_popw_vote(IDS[3], DOMAIN, 7, PROVIDER, VERDICT_FAIL, cls)
    assert build_popw_qc(DOMAIN, committee, v[2:], 7) is None  # 3 of 9
    built = build_popw_qc(DOMAIN, committee, [v[0], v[1], fail], 7)  # 6 of 9 pass
    assert built is not None and built.verdict == VERDICT_PASS
    assert is_valid_popw_qc(DOMAIN, committee, built, 7)
    assert not is_valid_popw_qc(DOMAIN, committee, built, 8)  # wrong epoch
    assert build_popw_qc(DOMAIN, committee, v, 8) is None  # old attestations do not count
    not_member = committee.subset(committee.addresses[:2])
    assert not is_valid_popw_qc(DOMAIN, not_member, built, 7)


# scheduler ----------------------------------------------------------------------------


def prov(addr, cls="A100", free=4, price=100, last=0, score=0):
    return ProviderInfo(addr, cls, free, price, last, score)


def test_scheduler_filters():
    job = JobSpec(1, "A100", 2, max_price=150)
    ps = [
        prov("0x" + "01" * 20, cls="H100"),
        prov("0x" + "02" * 20, free=1),
        prov("0x" + "03" * 20, price=151),
        prov("0x" + "04" * 20, last=None),
        prov("0x" + "05" * 20, last=3),  # too old at epoch 5
        prov("0x" + "06" * 20, price=150, last=4),
    ]
    assert [p.address for p in eligible_providers(job, ps, 5)] == [ps[5].address]
    assert choose_provider(job, ps[:5], 5) is None
    assert has_popw_standing(ps[5], 5) and not has_popw_standing(ps[5], 6)
    assert not has_popw_standing(ps[5], 3)  # a pass from the future is no standing


def test_scheduler_prefers_price_then_score_then_hash():
    job = JobSpec(9, "A100", 1, max_price=1000)
    a, b, c = ("0x" + k * 20 for k in ("0a", "0b", "0c"))
    assert choose_provider(job, [prov(a, price=120), prov(b, price=110)], 0) == b
    assert choose_provider(job, [prov(a, score=1), prov(b, score=2)], 0) == b
    tied = [prov(a), prov(b), prov(c)]
    expect = min((a, b, c), key=lambda x: tie_break(9, x))
    assert choose_provider(job, tied, 0) == expect
    assert choose_provider(job, list(reversed(tied)), 0) == expect  # input order is irrelevant
    winners = {choose_provider(JobSpec(j, "A100", 1, 1000), tied, 0) for j in range(30)}
    assert len(winners) > 1  # ties are spread across jobs


# evidence -------------------------------------------------------------------------------


def test_assign_evidence_roundtrip():
    a = sign_assign_vote(IDS[0], DOMAIN, 4, 2, PROVIDER)
    b = sign_assign_vote(IDS[0], DOMAIN, 4, 2, OTHER)
    pool = EvidencePool()
    assert pool.add_assign(a) is None
    assert pool.add_assign(a) is None  # same vote again is no equivocation
    ev = pool.add_assign(b)
    assert ev is not None and ev.kind == KIND_ASSIGN and ev.signer == IDS[0].address
    verify_evidence(DOMAIN, ev)
    assert pool.add_assign(b) is None  # reported once
    fn, args = ev.slash_call()
    assert fn == "slash_assign" and args[:2] == (4, 2) and len(args) == 6
    assert {args[2], args[4]} == {PROVIDER, OTHER} and len(args[3]) == len(args[5]) == 65
    with pytest.raises(InvalidVote):
        verify_evidence(Domain(1), ev)  # signatures are bound to the domain
    with pytest.raises(InvalidVote):
        assign_evidence(a, sign_assign_vote(IDS[0], DOMAIN, 4, 3, OTHER))  # other round
    with pytest.raises(InvalidVote):
        assign_evidence(a, sign_assign_vote(IDS[1], DOMAIN, 4, 2, OTHER))  # other signer


def test_popw_evidence():
    cls = gpu_class_id("A100")
    pool = EvidencePool()
    assert pool.add_popw(sign_popw_vote(IDS[1], DOMAIN, 3, PROVIDER, VERDICT_PASS, cls)) is None
    assert pool.add_popw(sign_popw_vote(IDS[1], DOMAIN, 4, PROVIDER, VERDICT_FAIL, cls)) is None
    ev = pool.add_popw(sign_popw_vote(IDS[1], DOMAIN, 3, PROVIDER, VERDICT_FAIL, cls))
    assert ev is not None and ev.kind == KIND_POPW
    verify_evidence(DOMAIN, ev)
    fn, args = ev.slash_call()
    assert fn == "slash_popw" and args[:2] == (3, PROVIDER) and len(args) == 8


def test_popw_vote_rule():
    cls = gpu_class_id("A100")
    assert committees.may_sign_popw_vote(None, VERDICT_PASS, cls)
    assert committees.may_sign_popw_vote((VERDICT_PASS, cls), VERDICT_PASS, cls)
    assert not committees.may_sign_popw_vote((VERDICT_PASS, cls), VERDICT_FAIL, cls)
    assert not committees.may_sign_popw_vote(
        (VERDICT_PASS, cls), VERDICT_PASS, gpu_class_id("H100")
    )
