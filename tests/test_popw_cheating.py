"""Dishonest provers are rejected; an honest prover always passes.

Each test would fail if the rule it relies on were dropped from the verifier (see the
comment naming the rule).
"""

import random

import pytest

from node.popw.challenge import Challenge, PopwError, new_challenge
from node.popw.classes import GpuClass, PopwPolicy, challenge_for
from node.popw.prover import Prover
from node.popw.testing import (
    ForgedProofProver,
    LastStepLazyProver,
    LazyProver,
    ReplayProver,
    SkippingProver,
    SolvingProver,
    WrongIdProver,
    WrongValueProver,
)
from node.popw.verifier import FAIL, LATE, PASS, draw_openings, verify_local

K = 16
GENEROUS = 60.0  # seconds: never the reason a test fails on a loaded machine


def check(prover: Prover, ch: Challenge, k: int = K, seed: int = 0, elapsed: float | None = None):
    commit = prover.commit(ch)
    return verify_local(
        ch,
        commit,
        commit.elapsed if elapsed is None else elapsed,
        prover.open,
        k,
        random.Random(seed),
    )


def test_honest_prover_passes_100_of_100_seeded_runs():
    prover = Prover()
    for seed in range(100):
        ch = new_challenge(16 << (seed % 3), 1 + seed % 4, GENEROUS, stride=1 + (seed % 4 == 3))
        v = check(prover, ch, seed=seed)
        assert v.status == PASS, (seed, v.reason)


def hits(skipped: set, requested: list) -> bool:
    """An opening fails iff its cell, or the previous committed cell of its row, was skipped."""
    return any((c, j) in skipped or (c - 1, j) in skipped for c, j in requested)


@pytest.mark.parametrize("fraction", [0.01, 0.10])
def test_skipping_prover_fails_exactly_when_an_opening_hits_a_skipped_cell(fraction):
    # rule: expected[i] == op.cur (recompute every opened row)
    prover = SkippingProver(fraction, seed=1)
    caught = 0
    runs = 40
    for seed in range(runs):
        ch = new_challenge(64, 8, GENEROUS)  # 512 cells: 1% = 5 cells, 10% = 51
        v = check(prover, ch, seed=seed)
        expected_hit = hits(prover.skipped, draw_openings(ch, K, random.Random(seed)))
        assert (v.status == FAIL) == expected_hit, (seed, v)
        caught += v.status == FAIL
    # detection at least 1 - (1 - f)^k in expectation; allow binomial slack
    p = 1 - (1 - fraction) ** K
    assert caught >= runs * p - 3 * (runs * p * (1 - p)) ** 0.5


def test_skipping_ten_percent_is_caught_with_64_openings():
    prover = SkippingProver(0.10, seed=2)
    for seed in range(10):
        v = check(prover, new_challenge(64, 4, GENEROUS), k=64, seed=seed)
        assert v.status == FAIL, v


def test_wrong_row_values_fail():
    # rule: expected[i] == op.cur
    for seed in range(5):
        v = check(WrongValueProver(), new_challenge(32, 3, GENEROUS), seed=seed)
        assert v.status == FAIL and "not reduce(square(previous) @ B)" in v.reason


def test_lazy_prover_with_made_up_proofs_fails():
    # rule: merkle.is_valid_proof(cur) against the committed root
    v = check(LazyProver(), new_challenge(32, 4, GENEROUS))
    assert v.status == FAIL and "Merkle proof" in v.reason


def test_on_demand_last_step_with_forged_proof_fails():
    # rule: merkle.is_valid_proof(cur) (the previous-row proof is genuine here)
    caught = 0
    for seed in range(10):
        v = check(LastStepLazyProver(), new_challenge(32, 2, GENEROUS), seed=seed)
        caught += v.status == FAIL
        assert v.status == FAIL or v.status == PASS
    assert caught >= 9  # each opening hits the last step with probability 1/2


def test_unreduced_previous_row_fails():
    # rule: committed rows are reduced (entries in [-2, 2]). Row 5 of step 1 is committed
    # with +5 on one entry: same residue, so step 2 still recomputes equal; only the rule
    # catches the opening (2, 5).
    from node.popw.backends import NumpyBackend
    from node.popw.testing import TamperingBackend
    from node.popw.verifier import check_openings

    def tamper(index, rows, first):
        if index == 1 and first <= 5 < first + len(rows):
            rows[5 - first, 0] += 5
        return rows

    ch = new_challenge(32, 3, GENEROUS)
    prover = Prover(TamperingBackend(NumpyBackend(), tamper))
    commit = prover.commit(ch)
    with pytest.raises(PopwError, match="not reduced"):
        check_openings(ch, commit, [(2, 5)], prover.open(ch.id, [(2, 5)]))


def test_forged_previous_rows_fail():
    # rule: merkle.is_valid_proof(prev). Without it, steps computed from fresh random rows
    # (in parallel, no chain) would stand in for the sequential chain.
    import numpy as np

    from node.popw import prg
    from node.popw.verifier import check_opening_shape, recompute_rows

    for seed in range(6):
        ch = Challenge(bytes([seed]) * 32, bytes([seed + 100]) * 32, 32, 4, 2, GENEROUS)
        prover = SolvingProver()
        prover.commit(ch)
        [op] = prover.open(ch.id, [(2, 7)])
        check_opening_shape(ch, op, (2, 7))
        prev = np.frombuffer(op.prev, np.int8).astype(np.float32)[None, :]
        b = prg.matrix(ch.seed, b"B", 32)
        assert recompute_rows(prev, b, 2)[0].tobytes() == op.cur  # the forgery recomputes
        v = check(prover, ch, seed=seed)
        assert v.status == FAIL and "previous row" in v.reason, v


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_stride_power_shortcut_fails(stride):
    # rule: every step squares its input (challenge.advance). A linear step would let
    # C_{c*s} = C_{(c-1)*s} @ B^s (mod 5) replace s products by one.
    import numpy as np

    from node.popw import prg
    from node.popw.testing import StridePowerProver

    ch = new_challenge(32, 8 * stride, GENEROUS, stride=stride)
    prover = StridePowerProver()
    commit = prover.commit(ch)
    # the cheat is real: with far fewer products it reproduces a chain without the square
    assert prover.backend.products <= ch.commits + stride.bit_length()
    assert prover.backend.products < ch.rounds
    c = prg.matrix(ch.seed, b"A", 32).astype(np.int64)
    b = prg.matrix(ch.seed, b"B", 32).astype(np.int64)
    for _ in range(stride):
        c = (c @ b + 2) % 5 - 2
    assert prover.row_bytes(1, 3) == c[3].astype(np.int8).tobytes()
    v = verify_local(ch, commit, commit.elapsed, prover.open, K, random.Random(1))
    assert v.status == FAIL and "square" in v.reason, v


def test_forged_proof_for_another_row_fails():
    # rule: the Merkle path is checked at the requested index
    v = check(ForgedProofProver(), new_challenge(32, 4, GENEROUS))
    assert v.status == FAIL and "Merkle proof" in v.reason


def test_commit_after_the_deadline_is_late():
    # a slow device (numpy here) claiming a fast class: the class's deadline for this
    # work is microseconds, so the honest, correct commit arrives late.
    fast = GpuClass("fast", tflops=100.0, memory_gb=80, n=64, stride=1)
    policy = PopwPolicy(
        target_seconds=4e-8, min_efficiency=0.5, network_allowance_seconds=0.0, openings=K
    )
    ch = challenge_for(fast, policy)
    assert ch.rounds == 8 and ch.deadline < 1e-6
    v = check(Prover(), ch)
    assert v.status == LATE and v.tflops < 100.0
    # the same work with a generous deadline passes: lateness alone made it late
    v = check(Prover(), Challenge(ch.id, ch.seed, ch.n, ch.rounds, ch.stride, GENEROUS))
    assert v.status == PASS


def test_wrong_values_beat_lateness():
    ch = new_challenge(32, 3, 0.5)
    v = check(WrongValueProver(), ch, elapsed=10.0)
    assert v.status == FAIL


def test_replayed_commit_with_old_id_fails():
    # rule: commit.id == challenge.id
    prover = ReplayProver(keep_old_id=True)
    assert check(prover, new_challenge(32, 3, GENEROUS)).status == PASS
    v = check(prover, new_challenge(32, 3, GENEROUS))
    assert v.status == FAIL and "another challenge id" in v.reason


def test_replayed_roots_relabelled_with_new_id_fail():
    # old roots under the new id: the rows open, but are not products under the new seed
    prover = ReplayProver(keep_old_id=False)
    assert check(prover, new_challenge(32, 3, GENEROUS)).status == PASS
    for seed in range(5):
        v = check(prover, new_challenge(32, 3, GENEROUS), seed=seed)
        assert v.status == FAIL, v


def test_wrong_challenge_id_fails():
    v = check(WrongIdProver(), new_challenge(32, 3, GENEROUS))
    assert v.status == FAIL and "another challenge id" in v.reason


def test_openings_are_drawn_from_the_checker_randomness_only():
    ch = new_challenge(64, 8, GENEROUS)
    a = draw_openings(ch, K, random.Random(1))
    b = draw_openings(ch, K, random.Random(2))
    assert a != b and all(1 <= c <= 8 and 0 <= j < 64 for c, j in a)
    assert len(draw_openings(ch, K)) == K  # system randomness by default


def test_commit_with_missing_roots_fails():
    # rule: one root per committed step (a prover that stopped early)
    from dataclasses import replace

    from node.popw.verifier import check_commit

    ch = new_challenge(32, 4, GENEROUS)
    commit = Prover().commit(ch)
    with pytest.raises(PopwError, match="wrong number of roots"):
        check_commit(ch, replace(commit, roots=commit.roots[:-1]))


def test_short_rows_fail():
    # rule: opened rows are exactly n entries
    from dataclasses import replace

    from node.popw.verifier import check_openings

    ch = new_challenge(32, 2, GENEROUS)
    prover = Prover()
    commit = prover.commit(ch)
    [op] = prover.open(ch.id, [(1, 3)])
    with pytest.raises(PopwError, match="wrong length"):
        check_openings(ch, commit, [(1, 3)], [replace(op, cur=op.cur[:-1])])
    with pytest.raises(PopwError, match="does not answer"):
        check_openings(ch, commit, [(1, 4)], [op])


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_wrong_number_of_openings_fails(change):
    # rule: one opening per request (a prover that leaves out the rows it cannot show)
    from node.popw.verifier import check_openings

    ch = new_challenge(32, 3, GENEROUS)
    prover = Prover()
    commit = prover.commit(ch)
    requested = draw_openings(ch, 4, random.Random(5))
    openings = prover.open(ch.id, requested)
    openings = openings[:-1] if change == "drop" else [*openings, openings[0]]
    with pytest.raises(PopwError, match="wrong number of openings"):
        check_openings(ch, commit, requested, openings)
