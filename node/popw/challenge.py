"""PoPW constants, the challenge, and the rules both sides share (pure functions).

A challenge asks for the chain ``C_0 = A``, ``C_i = reduce(square(C_{i-1}) @ B)`` for
``i = 1..rounds`` with A, B from ``prg`` (``square`` is entrywise); the prover commits to
every ``stride``-th step (``stride = 1`` on CPU classes: every step, as in DESIGN.md
section 6).

Why the entrywise square: without it a step is linear mod 5, so ``C_{i+s} = C_i @ B^s``
and a prover could compute ``B^s`` once (log2 s squarings) and then do one product per
committed step instead of ``stride``: up to 8x less work at the GPU classes' strides.
``x -> x^2`` is not affine on Z/5, so no product of matrices stands in for several steps
(docs/POPW.md section 1; ``StridePowerProver`` in ``testing.py`` is that cheat).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from node.popw.merkle import proof_length

PROTOCOL_ID = "/kaisar/popw/1"

# Centred reduction modulus: entries stay in [-2, 2] (= [-(P-1)/2, (P-1)/2]).
MODULUS = 5
HALF_MODULUS = MODULUS // 2
ID_SIZE = 32
SEED_SIZE = 32
MIN_N = 16
# |square(C) @ B| <= n * 4 * 2 before reduction; n <= 2^14 keeps every partial sum below
# 2^17 < 2^24, so fp32 (and TF32 / fp16 inputs, entries in [-2, 4], with fp32
# accumulation) computes every product exactly.
MAX_N = 1 << 14
MAX_ROUNDS = 1 << 16
MAX_COMMITS = 1 << 12  # roots in one commit (rounds / stride)
MAX_OPENINGS = 64
DEFAULT_OPENINGS = 16
MAX_DEADLINE_SECONDS = 600.0


class PopwError(Exception):
    """A PoPW message or parameter broke a rule; ``str(exc)`` is the reason."""


def require(condition: bool, reason: str) -> None:
    """Raise PopwError(reason) unless ``condition`` (asserts that survive ``python -O``)."""
    if not condition:
        raise PopwError(reason)


@dataclass(frozen=True)
class Challenge:
    id: bytes  # 32 random bytes naming this challenge (binds commit and openings)
    seed: bytes  # 32 random bytes the matrices are expanded from
    n: int  # matrix size (power of two)
    rounds: int  # chain length
    stride: int  # commit every `stride` steps (rounds % stride == 0)
    deadline: float  # seconds from sending the challenge to receiving the commit

    @property
    def commits(self) -> int:
        """Number of Merkle roots in a commit."""
        return self.rounds // self.stride

    @property
    def proof_len(self) -> int:
        """Hashes in one Merkle proof (37 at n = 2048: the tree is 16-ary)."""
        return proof_length(self.n)


def is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def validate_challenge(ch: Challenge) -> None:
    """The challenge parameters a prover accepts (and a checker may send)."""
    # Identifiers are fixed-size random bytes
    require(isinstance(ch.id, bytes) and len(ch.id) == ID_SIZE, "challenge id must be 32 bytes")
    require(isinstance(ch.seed, bytes) and len(ch.seed) == SEED_SIZE, "seed must be 32 bytes")
    # n is a power of two in range: perfect Merkle tree, whole PRG words per row, exact fp32
    require(is_power_of_two(ch.n) and MIN_N <= ch.n <= MAX_N, f"n={ch.n} out of range")
    # The chain is non-empty, bounded, and cut into whole commit intervals
    require(1 <= ch.rounds <= MAX_ROUNDS, f"rounds={ch.rounds} out of range")
    require(1 <= ch.stride <= ch.rounds and ch.rounds % ch.stride == 0, "stride must divide rounds")
    require(ch.commits <= MAX_COMMITS, f"{ch.commits} commits exceed {MAX_COMMITS}")
    # The deadline is positive and bounded
    require(0 < ch.deadline <= MAX_DEADLINE_SECONDS, "deadline out of range")


def new_challenge(n: int, rounds: int, deadline: float, stride: int = 1) -> Challenge:
    """A fresh challenge from the OS CSPRNG (the checker's side)."""
    ch = Challenge(os.urandom(ID_SIZE), os.urandom(SEED_SIZE), n, rounds, stride, deadline)
    validate_challenge(ch)
    return ch


# A commitment costs Theta(n^2) per committed step (n leaf hashes, the tree, the int8
# rows) plus a fixed Python cost per step; the product costs n^3. At n = 256 a commit per
# step is 68 % on top of the product (docs/BENCHMARKS.md). Committing no more often than
# every MIN_COMMIT_MACS multiply-adds keeps it small at every n: stride 1 from n = 1024
# on (n^3 >= 2^30), 2 at n = 512, 16 at n = 256. Soundness does not depend on the stride
# (the square closes the B^s shortcut; an opening checks `stride` steps of its row).
MIN_COMMIT_MACS = 1 << 28
MAX_AUTO_STRIDE = 16  # the checker recomputes `stride` steps per opened row


def commit_stride(n: int) -> int:
    """Default stride for size n: the smallest power of two s with s * n^3 >=
    MIN_COMMIT_MACS, at most MAX_AUTO_STRIDE (classes may set their own)."""
    s = 1
    while s < MAX_AUTO_STRIDE and s * n**3 < MIN_COMMIT_MACS:
        s *= 2
    return s


def work_flops(n: int, rounds: int) -> float:
    """Dense multiply-add work of the chain: rounds products of n x n matrices."""
    return 2.0 * n**3 * rounds


def centred_reduce(c: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``c - P * rint(c / P)``: entries back into [-2, 2], exact for |c| < 2^24 in fp32.

    c is an integer matrix stored as float; ``c / P`` is never halfway (P odd), so the
    rounding cannot differ between backends.
    """
    q = np.multiply(c, np.float32(1.0 / MODULUS), dtype=c.dtype)
    np.rint(q, out=q)
    q *= MODULUS
    return np.subtract(c, q, out=out)


def square(x: np.ndarray) -> np.ndarray:
    """The step's non-linear part: entrywise ``x * x`` (a reduced row, entries in [-2, 2],
    becomes the next product's input, entries in {0, 1, 4})."""
    return np.multiply(x, x, dtype=x.dtype)


def advance(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One step of the chain for rows ``x`` (reduced, as fp32): ``reduce(square(x) @ B)``.
    The plain reference; backends and the verifier compute the same thing faster."""
    return centred_reduce(square(x) @ b)
