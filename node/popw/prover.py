"""The provider side of PoPW: compute the chain, commit to it, open rows on request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from node.popw import merkle
from node.popw.backends import Backend, NumpyBackend
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
        # product runs on a GPU. On a CPU backend the BLAS threads already use every core
        # and the GIL hand-offs (5 ms switch interval vs sub-ms steps at small n) made
        # the pipelined numpy prover up to 10x slower under load; so numpy hashes inline.
        self.pipeline = (
            self.backend.name not in ("numpy", "tampered-numpy") if pipeline is None else pipeline
        )
        self.device = device or device_identity(self.backend.name, self.backend.device)
        self._challenge: Challenge | None = None
        self._steps: list[np.ndarray] = []
        self._levels: list[list[list[bytes]]] = []
        self._reserved = threading.Lock()
        self._hasher = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="popw-hash")
            if self.pipeline
            else None
        )

    def try_reserve(self) -> bool:
        """Claim the prover for one exchange; False if another exchange holds it."""
        return self._reserved.acquire(blocking=False)

    def release(self) -> None:
        self._reserved.release()

    def commit(self, ch: Challenge) -> Commitment:
        validate_challenge(ch)
        steps: list[np.ndarray] = []
        trees: list[Future[list[list[bytes]]]] = []

        def on_commit(index: int, rows: np.ndarray) -> None:
            assert index == len(steps) + 1
            steps.append(rows)
            if self._hasher is not None:
                trees.append(self._hasher.submit(_tree_of, rows))
            else:
                done: Future[list[list[bytes]]] = Future()
                done.set_result(_tree_of(rows))
                trees.append(done)

        t0 = time.perf_counter()
        self.backend.run_chain(ch.seed, ch.n, ch.rounds, ch.stride, on_commit)
        levels = [t.result() for t in trees]
        elapsed = time.perf_counter() - t0
        self._challenge, self._steps, self._levels = ch, steps, levels
        return Commitment(ch.id, [merkle.root_of(lv) for lv in levels], elapsed, dict(self.device))

    def open(self, challenge_id: bytes, requests: list[tuple[int, int]]) -> list[Opening]:
        ch = self._challenge
        require(ch is not None and ch.id == challenge_id, "no commit for this challenge id")
        assert ch is not None
        return [self._open_one(c, j) for c, j in requests]

    def _open_one(self, c: int, j: int) -> Opening:
        assert self._challenge is not None
        require(1 <= c <= len(self._steps) and 0 <= j < self._challenge.n, "opening out of range")
        cur = self.row_bytes(c, j)
        proof = merkle.proof_of(self._levels[c - 1], j)
        if c == 1:
            return Opening(c, j, b"", [], cur, proof)
        prev = self.row_bytes(c - 1, j)
        return Opening(c, j, prev, merkle.proof_of(self._levels[c - 2], j), cur, proof)

    def row_bytes(self, c: int, j: int) -> bytes:
        return self._steps[c - 1][j].tobytes()


def _tree_of(rows: np.ndarray) -> list[list[bytes]]:
    return merkle.build_levels(merkle.leaf_hashes(rows))
