"""The provider side of PoPW: compute the chain, commit to it, open rows on request."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from node.popw import merkle
from node.popw.backends import Backend, NumpyBackend, split_in_two
from node.popw.challenge import Challenge, require, validate_challenge
from node.popw.inventory import device_identity


@dataclass(frozen=True)
class Commitment:
    id: bytes  # the challenge id this commit answers
    roots: list[bytes]  # Merkle root of each committed step, in order
    elapsed: float  # prover-measured seconds (informational; the checker times it itself)
    device: dict[str, str | int] = field(default_factory=dict)  # backend, name, uuid, ...


@dataclass(frozen=True)
class Opening:
    commit: int  # 1-based index of the committed step
    row: int
    prev: bytes  # row of the previous committed step (empty for commit 1: it is A)
    prev_proof: list[bytes]
    cur: bytes  # row of this committed step, int8
    proof: list[bytes]


class Prover:
    """Honest prover. Keeps the last challenge's steps (int8) and trees to open them.

    One exchange at a time: the responder holds ``try_reserve()`` from the challenge to
    the proofs, so a second concurrent challenge can neither share the device's
    workspace nor replace the steps the first one is about to open (it gets "busy").
    """

    def __init__(
        self,
        backend: Backend | None = None,
        device: dict[str, str | int] | None = None,
        pipeline: bool | None = None,
    ):
        self.backend = backend or NumpyBackend()
        # Hash step i in a worker thread while step i+1 computes: worth it when the
        # product runs on a GPU. On a CPU backend every core already runs a row band of
        # the chain, and the GIL hand-offs (5 ms switch interval vs sub-ms steps at
        # small n) made a pipelined numpy prover up to 10x slower under load; so numpy
        # hashes inline, each band in its own thread.
        self.pipeline = (
            self.backend.name not in ("numpy", "tampered-numpy") if pipeline is None else pipeline
        )
        self.device = device or device_identity(self.backend.name, self.backend.device)
        self._challenge: Challenge | None = None
        # committed steps in leaf layout (merkle.leaf_storage), reused by the next challenge
        # of the same shape: no page faults on fresh memory inside the timed chain
        self._store = np.empty((0, 0, 1), dtype=np.int8)
        self._levels: list[list[list[bytes]]] = []
        self._reserved = threading.Lock()
        self._hasher = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="popw-hash")
            if self.pipeline
            else None
        )
        # Second hashing thread for rows hashlib hashes without the GIL (section 2 of
        # docs/POPW.md): the leaves of a whole step (GPU backends) in two halves at once.
        self._splitter = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="popw-leaves")
            if (os.cpu_count() or 1) > 1
            else None
        )

    def try_reserve(self) -> bool:
        """Claim the prover for one exchange; False if another exchange holds it."""
        return self._reserved.acquire(blocking=False)

    def release(self) -> None:
        self._reserved.release()

    def commit(self, ch: Challenge) -> Commitment:
        validate_challenge(ch)
        self._challenge = None  # the previous challenge's rows are overwritten from here on
        store = self._storage(ch.commits, ch.n)
        n = ch.n
        # per committed step: the tree levels of each band of rows reported so far, and
        # the step's whole tree once its bands cover all n rows
        bands: list[list[tuple[int, list[list[bytes]]]]] = [[] for _ in range(ch.commits)]
        levels: list[list[list[bytes]] | None] = [None] * ch.commits
        joined = threading.Lock()
        pending: list[Future[None]] = []

        def hash_band(index: int, r0: int, r1: int) -> None:
            leaves = self._leaves(store[index - 1, r0:r1], whole=r1 - r0 == n)
            part = merkle.band_levels(leaves, r0, n)
            with joined:
                parts = bands[index - 1]
                parts.append((r0, part))
                complete = sum(len(lv[0]) for _, lv in parts) == n
            if complete:  # the last band of the step joins the tree (in its own thread)
                levels[index - 1] = merkle.join_bands([lv for _, lv in sorted(parts)], n)

        def on_rows(index: int, r0: int, r1: int) -> None:
            if self._hasher is not None:
                pending.append(self._hasher.submit(hash_band, index, r0, r1))
            else:  # in the calling (band) thread: each band hashes its own rows
                hash_band(index, r0, r1)

        t0 = time.perf_counter()
        self.backend.run_chain(ch.seed, n, ch.rounds, ch.stride, store, on_rows)
        for f in pending:
            f.result()
        require(all(lv is not None for lv in levels), "backend committed the wrong number of steps")
        done = [lv for lv in levels if lv is not None]
        elapsed = time.perf_counter() - t0
        self._challenge, self._levels = ch, done
        return Commitment(ch.id, [merkle.root_of(lv) for lv in done], elapsed, dict(self.device))

    def _storage(self, commits: int, n: int) -> np.ndarray:
        if self._store.shape[:2] != (commits, n):
            self._store = np.empty((0, 0, 1), dtype=np.int8)  # free the old one first
            self._store = merkle.leaf_storage(commits, n)
        return self._store

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        ch = self._challenge
        require(ch is not None and ch.id == challenge_id, "no commit for this challenge id")
        assert ch is not None
        return [self._open_one(c, j) for c, j in requests]

    def _open_one(self, c: int, j: int) -> Opening:
        assert self._challenge is not None
        require(1 <= c <= len(self._levels) and 0 <= j < self._challenge.n, "opening out of range")
        cur = self.row_bytes(c, j)
        proof = merkle.proof_of(self._levels[c - 1], j)
        if c == 1:
            return Opening(c, j, b"", [], cur, proof)
        prev = self.row_bytes(c - 1, j)
        return Opening(c, j, prev, merkle.proof_of(self._levels[c - 2], j), cur, proof)

    def row_bytes(self, c: int, j: int) -> bytes:
        return self._store[c - 1, j, 1:].tobytes()

    def _leaves(self, rows: np.ndarray, whole: bool) -> list[bytes]:
        """Leaf hashes of rows in leaf layout. A whole step of rows of >= 2 KiB (which
        hashlib hashes without the GIL) is hashed in two halves on two threads when the
        backend reports whole steps (GPU backends); bands are already one per core."""
        if not whole or self._splitter is None or rows.shape[1] < merkle.GIL_FREE_ROW_BYTES:
            return merkle.leaf_hashes_laid_out(rows)
        halves: list[list[bytes]] = [[], []]

        def half(r0: int, r1: int) -> None:
            halves[r0 > 0] = merkle.leaf_hashes_laid_out(rows[r0:r1])

        split_in_two(half, rows.shape[0], self._splitter)
        return halves[0] + halves[1]

