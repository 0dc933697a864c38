"""The checker side of PoPW: draw openings after the commit, verify them exactly, judge.

Every rule is a small function that raises ``PopwError(reason)``; ``judge`` turns the
first broken rule (or a late commit) into a Verdict. Verification costs O(k * stride * n^2)
plus regenerating B (O(n^2)), against the prover's O(rounds * n^3).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from node.popw import merkle, prg
from node.popw.blas import single_threaded_blas
from node.popw.challenge import (
    HALF_MODULUS,
    Challenge,
    PopwError,
    centred_reduce,
    require,
    square,
    work_flops,
)
from node.popw.prover import Commitment, Opening

# Rows of B per streamed block (streamed_product): 64 rows of n = 2048 fp32 are 512 KiB,
# which stays in L2 while it is generated and used (best of 16-256 rows measured).
B_BLOCK_ROWS = 64

PASS = "pass"
FAIL = "fail"
LATE = "late"
BUSY = "busy"
STATUSES = (PASS, FAIL, LATE, BUSY)


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | late | busy
    reason: str  # empty on pass
    elapsed: float  # checker-measured seconds from challenge sent to commit received
    tflops: float  # effective dense TFLOPS = work / elapsed (0 when no commit)
    challenge_id: bytes = b""
    retry_after: float = 0.0  # busy only: seconds the provider asked the checker to wait

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reason": self.reason,
            "elapsed": round(self.elapsed, 6),
            "tflops": round(self.tflops, 6),
            "challenge_id": self.challenge_id.hex(),
            "retry_after": self.retry_after,
        }


def draw_openings(ch: Challenge, k: int, rng: random.Random | None = None) -> list[tuple[int, int]]:
    """k (commit, row) pairs, uniform with replacement, from the checker's own randomness.

    Drawn only after the commit arrived, so the prover cannot know them in advance.
    With replacement makes the miss probability of a prover that skipped a fraction f
    of (step, row) cells exactly (1 - f)^k.
    """
    rng = rng or random.SystemRandom()
    return [(rng.randrange(1, ch.commits + 1), rng.randrange(ch.n)) for _ in range(k)]


def effective_tflops(ch: Challenge, elapsed: float) -> float:
    return work_flops(ch.n, ch.rounds) / max(elapsed, 1e-9) / 1e12


def is_late(ch: Challenge, elapsed: float) -> bool:
    return elapsed > ch.deadline


def check_commit(ch: Challenge, commit: Commitment) -> None:
    # The commit answers this challenge (not a replay of an older one)
    require(commit.id == ch.id, "commit is for another challenge id")
    # One root per committed step
    require(len(commit.roots) == ch.commits, "wrong number of roots")
    require(all(len(r) == merkle.HASH_SIZE for r in commit.roots), "malformed root")


def check_opening_shape(ch: Challenge, op: Opening, requested: tuple[int, int]) -> None:
    # The opening answers the request at the same position
    require((op.commit, op.row) == requested, "opening does not answer the request")
    # Rows are n int8 entries; commit 1 has no previous committed row (it is A)
    require(len(op.cur) == ch.n, "row has wrong length")
    if op.commit == 1:
        require(op.prev == b"" and op.prev_proof == [], "commit 1 carries a previous row")
    else:
        require(len(op.prev) == ch.n, "previous row has wrong length")


def check_opening_proofs(ch: Challenge, commit: Commitment, op: Opening) -> None:
    # The row is leaf `row` of the committed step's tree
    require(
        merkle.is_valid_proof(op.cur, op.row, op.proof, ch.n, commit.roots[op.commit - 1]),
        "Merkle proof of the row does not match the root",
    )
    # The previous row is leaf `row` of the previous committed step's tree
    if op.commit > 1:
        require(
            merkle.is_valid_proof(
                op.prev, op.row, op.prev_proof, ch.n, commit.roots[op.commit - 2]
            ),
            "Merkle proof of the previous row does not match the root",
        )


def previous_rows(ch: Challenge, openings: list[Opening]) -> np.ndarray:
    """The k starting rows as fp32: A's rows regenerated for commit 1, else the opened ones."""
    out = np.empty((len(openings), ch.n), dtype=np.float32)
    a_rows = [op.row for op in openings if op.commit == 1]
    a_values = iter(prg.matrix_rows(ch.seed, b"A", ch.n, a_rows)) if a_rows else iter(())
    for i, op in enumerate(openings):
        out[i] = next(a_values) if op.commit == 1 else np.frombuffer(op.prev, dtype=np.int8)
    # Committed rows are reduced: entries in [-2, 2] (keeps the recomputation exact)
    require(bool(np.all(np.abs(out) <= HALF_MODULUS)), "previous row is not reduced")
    return out


def streamed_product(seed: bytes, n: int, prev: np.ndarray) -> np.ndarray:
    """``reduce(square(prev) @ B)`` for k rows without materialising B: B comes from the PRG in
    blocks of ``B_BLOCK_ROWS`` rows and each block's share ``B_blk^T @ prev[:, blk]^T``
    is added up, so B only ever lives in the cache. Every partial sum is an integer
    below 2^24, so the blocked sum is exact and equals the one-product result bit for bit.
    """
    xt = square(np.ascontiguousarray(prev.T))
    acc = np.zeros((n, prev.shape[0]), dtype=np.float32)
    for r0, block in prg.matrix_blocks(seed, b"B", n, min(n, B_BLOCK_ROWS)):
        acc += block.T @ xt[r0 : r0 + block.shape[0]]
    return np.ascontiguousarray(centred_reduce(acc).T).astype(np.int8)


def recompute_rows(prev: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """All k rows advanced `stride` steps at once: one small product per step.

    Computed transposed, ``B^T @ X^T`` (n x k): OpenBLAS runs that tall-skinny shape ~5x
    cheaper than the equal ``X @ B`` (k x n) on the development VMs; every product is
    exact, so the order of summation cannot change a bit.
    """
    xt = np.ascontiguousarray(prev.T)
    bt = b.T
    for _ in range(stride):
        xt = centred_reduce(bt @ square(xt))
    return np.ascontiguousarray(xt.T).astype(np.int8)


def check_openings(
    ch: Challenge,
    commit: Commitment,
    requested: list[tuple[int, int]],
    openings: list[Opening],
    b: np.ndarray | None = None,
) -> None:
    """Every requested row is committed, and equals ``stride`` steps of
    ``reduce(square(previous row) @ B)`` exactly."""
    check_commit(ch, commit)
    require(len(openings) == len(requested), "wrong number of openings")
    for op, req in zip(openings, requested, strict=True):
        check_opening_shape(ch, op, req)
        check_opening_proofs(ch, commit, op)
    if not openings:
        return
    prev = previous_rows(ch, openings)
    with single_threaded_blas():  # k rows: one core is enough, and nothing spins
        if b is None and ch.stride == 1:
            expected = streamed_product(ch.seed, ch.n, prev)  # B is needed once
        else:
            b = prg.matrix(ch.seed, b"B", ch.n) if b is None else b
            expected = recompute_rows(prev, b, ch.stride)
    for i, op in enumerate(openings):
        # The committed row is the product of the committed previous row, bit for bit
        require(
            expected[i].tobytes() == op.cur,
            f"row {op.row} of commit {op.commit} is not reduce(square(previous) @ B)",
        )


def judge(ch: Challenge, elapsed: float, error: PopwError | None) -> Verdict:
    """fail (a rule broke) beats late (correct but after the deadline) beats pass."""
    tflops = effective_tflops(ch, elapsed)
    if error is not None:
        return Verdict(FAIL, str(error), elapsed, tflops, ch.id)
    if is_late(ch, elapsed):
        return Verdict(
            LATE,
            f"commit after {elapsed:.3f}s > deadline {ch.deadline:.3f}s",
            elapsed,
            tflops,
            ch.id,
        )
    return Verdict(PASS, "", elapsed, tflops, ch.id)


def verify_local(
    ch: Challenge,
    commit: Commitment,
    elapsed: float,
    prover_open: Callable[[bytes, list[tuple[int, int]]], list[Opening]],
    k: int,
    rng: random.Random | None = None,
) -> Verdict:
    """The whole check without a network (selftest, bench, tests)."""
    requested = draw_openings(ch, k, rng)
    try:
        check_commit(ch, commit)
        openings = prover_open(ch.id, requested)
        check_openings(ch, commit, requested, openings)
    except PopwError as exc:
        return judge(ch, elapsed, exc)
    return judge(ch, elapsed, None)
