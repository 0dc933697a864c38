"""Dishonest provers, for the cheating tests and for devnet fault injection.

Each models one way to claim work that was not done. The verifier must reject every
one of them; ``tests/test_popw_cheating.py`` checks it does, exactly when it should.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import numpy as np

from node.popw import prg
from node.popw.backends import Backend, NumpyBackend, StepCallback
from node.popw.challenge import HALF_MODULUS, MODULUS, Challenge, advance
from node.popw.prover import Commitment, Opening, Prover
from node.popw.verifier import recompute_rows


class TamperingBackend:
    """Wraps a backend; ``tamper(commit_index, rows, first)`` edits the int8 rows before
    they are committed (the chain itself continues from the true values). ``rows`` is a
    band of the step (``first`` is the index of its first row): the backend may report
    a step in bands, from several threads."""

    def __init__(self, inner: Backend, tamper) -> None:
        self.inner = inner
        self.tamper = tamper
        self.name = f"tampered-{inner.name}"
        self.device = inner.device

    def run_chain(
        self,
        seed: bytes,
        n: int,
        rounds: int,
        stride: int,
        out: np.ndarray,
        on_rows: StepCallback,
    ) -> None:
        def wrapped(index: int, r0: int, r1: int) -> None:
            rows = out[index - 1, r0:r1, 1:]
            rows[...] = self.tamper(index, rows, r0)
            on_rows(index, r0, r1)

        self.inner.run_chain(seed, n, rounds, stride, out, wrapped)

    def bare_matmul_seconds(self, n: int, rounds: int) -> float:
        return self.inner.bare_matmul_seconds(n, rounds)


def _garbage_row(rng: random.Random, n: int) -> np.ndarray:
    return np.array([rng.randint(-HALF_MODULUS, HALF_MODULUS) for _ in range(n)], dtype=np.int8)


class SkippingProver(Prover):
    """Skips a fraction f of (commit, row) cells: commits random reduced rows there.

    ``skipped`` holds the cells of the last challenge, so a test can say exactly which
    openings must fail: a skipped cell, or the cell right after one (its previous row
    is garbage).
    """

    def __init__(self, fraction: float, seed: int = 0) -> None:
        self.fraction = fraction
        self.rng = random.Random(seed)
        self.skipped: set[tuple[int, int]] = set()
        super().__init__(TamperingBackend(NumpyBackend(), self._tamper))

    def commit(self, ch: Challenge) -> Commitment:
        cells = [(c, j) for c in range(1, ch.commits + 1) for j in range(ch.n)]
        count = max(1, round(self.fraction * len(cells)))
        self.skipped = set(self.rng.sample(cells, count))
        return super().commit(ch)

    def _tamper(self, index: int, rows: np.ndarray, first: int) -> np.ndarray:
        for c, row in self.skipped:
            j = row - first
            if c == index and 0 <= j < rows.shape[0]:
                garbage = _garbage_row(self.rng, rows.shape[1])
                while np.array_equal(garbage, rows[j]):
                    garbage = _garbage_row(self.rng, rows.shape[1])
                rows[j] = garbage
        return rows


class WrongValueProver(Prover):
    """Commits rows that are almost right: one entry of every row is off (e.g. a device
    computing in a lossy format, or a bug). Consistent Merkle proofs, wrong values."""

    def __init__(self) -> None:
        super().__init__(TamperingBackend(NumpyBackend(), self._tamper))

    @staticmethod
    def _tamper(index: int, rows: np.ndarray, first: int) -> np.ndarray:
        col = index % rows.shape[1]
        rows[:, col] = np.where(rows[:, col] == HALF_MODULUS, -HALF_MODULUS, rows[:, col] + 1)
        return rows


class LazyProver(Prover):
    """Does no chain at all: commits random roots, then computes only the opened rows on
    demand (cheap: k row products) and sends them with made-up Merkle proofs."""

    def commit(self, ch: Challenge) -> Commitment:
        self._lazy = ch
        return Commitment(
            ch.id, [os.urandom(32) for _ in range(ch.commits)], 0.001, dict(self.device)
        )

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        ch = self._lazy
        b = prg.matrix(ch.seed, b"B", ch.n)
        out = []
        for c, j in requests:
            x = prg.matrix_rows(ch.seed, b"A", ch.n, [j])
            rows = []
            for _ in range(c * ch.stride):
                x = advance(x, b)
                rows.append(x.astype(np.int8)[0].tobytes())
            prev = rows[-1 - ch.stride] if c > 1 else b""
            fake = [os.urandom(32) for _ in range(ch.proof_len)]
            out.append(Opening(c, j, prev, fake if c > 1 else [], rows[-1], fake))
        return out


class ForgedProofProver(Prover):
    """Honest commit, but opens a different (correctly recomputed) row index under the
    requested one: right values for row j', proof for row j'. The index binding in the
    Merkle path must catch it."""

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        assert self._challenge is not None
        n = self._challenge.n
        honest = super().open(challenge_id, [(c, (j + 1) % n) for c, j in requests])
        return [replace(op, row=j) for op, (c, j) in zip(honest, requests, strict=True)]


class ReplayProver(Prover):
    """Computes the first challenge honestly, then answers every later challenge with
    that old commit. ``keep_old_id=False`` relabels the old roots with the new id."""

    def __init__(self, keep_old_id: bool = True) -> None:
        super().__init__()
        self.keep_old_id = keep_old_id
        self._old: Commitment | None = None

    def commit(self, ch: Challenge) -> Commitment:
        if self._old is None:
            self._old = super().commit(ch)
            return self._old
        if self.keep_old_id:
            return self._old
        assert self._challenge is not None
        self._challenge = replace(self._challenge, id=ch.id)  # open old rows under the new id
        return replace(self._old, id=ch.id)


class WrongIdProver(Prover):
    """Honest work, but the commit names another challenge id."""

    def commit(self, ch: Challenge) -> Commitment:
        return replace(super().commit(ch), id=os.urandom(32))


class LastStepLazyProver(Prover):
    """Computes every step but the last, commits a random root for it, and when the last
    step is opened computes that one row on demand (correct value) under a made-up proof.
    Only the Merkle check of the opened row itself catches this one."""

    def commit(self, ch: Challenge) -> Commitment:
        honest = super().commit(ch)
        return replace(honest, roots=[*honest.roots[:-1], os.urandom(32)])

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        ch = self._challenge
        assert ch is not None
        b = prg.matrix(ch.seed, b"B", ch.n)
        out = []
        for op in super().open(challenge_id, requests):
            if op.commit == ch.commits:
                x = np.frombuffer(op.prev, np.int8).astype(np.float32)[None, :]
                if op.commit == 1:
                    x = prg.matrix_rows(ch.seed, b"A", ch.n, [op.row])
                cur = recompute_rows(x, b, ch.stride)[0].tobytes()
                op = replace(op, cur=cur, proof=[os.urandom(32) for _ in range(ch.proof_len)])
            out.append(op)
        return out


class SolvingProver(Prover):
    """Does one honest step, then commits rows it can explain without the chain: for
    each later committed step c it draws random reduced rows Z_c and commits
    ``stride`` steps from them (no step waits for the one before, so the work spreads
    over any number of devices at once). Asked to open (c, j) with c > 1, it sends
    ``Z_c[j]`` as the previous row: the row recomputes, but it is not the committed row
    of step c - 1. (On a linear chain the forger would solve ``prev = cur @ B^-1 mod 5``
    instead; the square leaves no inverse to solve with, so it picks ``prev`` first.)
    Only the Merkle proof of the previous row catches it.
    """

    def commit(self, ch: Challenge) -> Commitment:
        rng = np.random.default_rng(int.from_bytes(ch.seed[:8], "little"))
        b = prg.matrix(ch.seed, b"B", ch.n)
        self._forged: dict[int, np.ndarray] = {}

        def tamper(index: int, rows: np.ndarray, first: int) -> np.ndarray:
            if index == 1:
                return rows
            z = self._forged.setdefault(
                index,
                rng.integers(-HALF_MODULUS, HALF_MODULUS + 1, (ch.n, ch.n)).astype(np.float32),
            )
            return recompute_rows(z[first : first + rows.shape[0]], b, ch.stride)

        self.backend = TamperingBackend(NumpyBackend(), tamper)
        return super().commit(ch)

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        out = []
        for op in super().open(challenge_id, requests):
            if op.commit > 1:
                op = replace(op, prev=self._forged[op.commit][op.row].astype(np.int8).tobytes())
            out.append(op)
        return out


def matrix_power_mod(b: np.ndarray, e: int, p: int = MODULUS) -> tuple[np.ndarray, int]:
    """``B^e mod p`` (entries centred) by repeated squaring, and the products it took."""
    result = None
    base = b.astype(np.int64)
    products = 0
    while e:
        if e & 1:
            if result is None:
                result = base
            else:
                result = (result @ base) % p
                products += 1
        e >>= 1
        if e:
            base = (base @ base) % p
            products += 1
    assert result is not None
    return (result + p // 2) % p - p // 2, products


class PowerBackend:
    """The shortcut a linear chain would allow: ``C_{c*s} = C_{(c-1)*s} @ B^s (mod 5)``.
    Computes ``B^s`` once (log2 s squarings), then one product per committed step
    instead of ``s``. ``products`` counts the n x n products it did."""

    name = "stride-power"
    device = "cpu"

    def __init__(self) -> None:
        self.products = 0

    def run_chain(
        self, seed: bytes, n: int, rounds: int, stride: int, out: np.ndarray, on_rows: StepCallback
    ) -> None:
        m, self.products = matrix_power_mod(prg.matrix(seed, b"B", n), stride)
        cur = prg.matrix(seed, b"A", n).astype(np.int64)
        for c in range(1, rounds // stride + 1):
            cur = (cur @ m + HALF_MODULUS) % MODULUS - HALF_MODULUS
            self.products += 1
            out[c - 1, :, 1:] = cur
            on_rows(c, 0, n)

    def bare_matmul_seconds(self, n: int, rounds: int) -> float:
        return NumpyBackend(threads=1).bare_matmul_seconds(n, rounds)


class StridePowerProver(Prover):
    """Commits every ``stride``-th step of the chain as if each step were linear
    (``PowerBackend``): rounds / stride + log2 stride products instead of rounds. It
    reproduces a chain without the entrywise square exactly, so only the square in
    each step (``challenge.advance``) makes its rows wrong."""

    def __init__(self) -> None:
        super().__init__(PowerBackend())
