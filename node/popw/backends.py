"""Compute backends for the prover chain: numpy (always), torch / cupy when CUDA is present.

A backend computes ``C_i = reduce(square(C_{i-1}) @ B)`` and writes each committed step as int8
rows into host storage in leaf layout (``merkle.leaf_storage``), then calls back (the
prover hashes it). All backends give bit-identical
results: inputs are small integers, products accumulate exactly in fp32 (or TF32
tensor cores with fp32 accumulation), and the centred reduction is exact.
"""

from __future__ import annotations

import glob
import importlib
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from node.popw import blas, prg
from node.popw.challenge import MODULUS

# on_rows(c, r0, r1): rows r0..r1 of committed step c (1..) are in out[c - 1, r0:r1, 1:]
# (int8, leaf layout). A backend calls it once per committed step with the whole step
# (0, n), or once per row band, possibly from several threads at once (NumpyBackend).
StepCallback = Callable[[int, int, int], None]
# Rows per block in the numpy reduction: ~256 KiB of fp32 per block stays in L2, which
# makes the 4 elementwise passes ~3x cheaper than whole-matrix passes at n = 2048.
REDUCE_BLOCK_BYTES = 1 << 18
# A band is at least this many rows: below, the per-step Python work of a second thread
# costs more than half a product saves (and tiny test matrices stay on one thread).
MIN_BAND_ROWS = 32


class Backend(Protocol):
    name: str
    device: str

    def run_chain(
        self,
        seed: bytes,
        n: int,
        rounds: int,
        stride: int,
        out: np.ndarray,
        on_rows: StepCallback,
    ) -> None: ...

    def bare_matmul_seconds(self, n: int, rounds: int) -> float: ...


def _reduce_blocked(c: np.ndarray, tmp: np.ndarray, out_i8: np.ndarray | None) -> None:
    """In place ``c -= P * rint(c / P)`` by row blocks, optionally writing those reduced
    int8 rows (a committed step), then ``c *= c``: the next product's input (``square``)."""
    n = c.shape[1]
    block = max(1, REDUCE_BLOCK_BYTES // (4 * n))
    inv = np.float32(1.0 / MODULUS)
    for r0 in range(0, c.shape[0], block):
        cb, tb = c[r0 : r0 + block], tmp[r0 : r0 + block]
        np.multiply(cb, inv, out=tb)
        np.rint(tb, out=tb)
        np.multiply(tb, np.float32(MODULUS), out=tb)
        np.subtract(cb, tb, out=cb)
        if out_i8 is not None:
            np.copyto(out_i8[r0 : r0 + block], cb, casting="unsafe")
        np.multiply(cb, cb, out=cb)  # while the block is in cache


def split_in_two(fn: Callable[[int, int], Any], rows: int, pool: ThreadPoolExecutor) -> None:
    """``fn(0, h)`` on this thread while ``fn(h, rows)`` runs on ``pool``; both finish."""
    half = rows // 2
    other = pool.submit(fn, half, rows)
    try:
        fn(0, half)
    finally:
        other.result()


def usable_cores() -> int:
    """Cores this process may run on (taskset / cgroup affinity), not just the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _band_chain(
    cur: np.ndarray,
    b: np.ndarray,
    nxt: np.ndarray,
    tmp: np.ndarray,
    rounds: int,
    stride: int,
    rows_out: np.ndarray,
    on_rows: Callable[[int], None],
) -> None:
    """The chain of one row band: product, reduction, int8 rows, square, callback, per
    step. ``cur`` holds the band's first input already squared (``run_chain``)."""
    matmul = np.matmul
    for step in range(1, rounds + 1):
        matmul(cur, b, out=nxt)
        c, r = divmod(step, stride)
        _reduce_blocked(nxt, tmp, rows_out[c - 1] if r == 0 else None)
        cur, nxt = nxt, cur
        if r == 0:
            on_rows(c)


class NumpyBackend:
    """numpy on the CPU, the chain cut into row bands that run on separate cores.

    Row j of ``C_i`` depends only on row j of ``C_{i-1}`` (and B), so each band of rows
    is an independent chain: every thread runs its band's products on one BLAS thread
    (``blas.single_threaded_blas``), reduces and hashes its own rows, and never waits
    for the other band between steps. OpenBLAS splitting each small product over the
    cores instead pays a fork/join per product, and the reduction and hashing between
    products ran on one core while the other idled (docs/BENCHMARKS.md, PoPW).
    Without a thread-local BLAS setter the chain runs as one band (BLAS threads as is).
    """

    name = "numpy"

    def __init__(self, threads: int | None = None) -> None:
        self._ws: tuple[np.ndarray, np.ndarray] | None = None
        cores = usable_cores() if threads is None else threads
        self.threads = cores
        self._pool = (
            ThreadPoolExecutor(max_workers=cores - 1, thread_name_prefix="popw-band")
            if cores > 1
            else None
        )
        self.device = platform.processor() or platform.machine() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        self.device = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass

    def bands(self, n: int) -> int:
        """Row bands of an n x n chain: a power of two, one per usable core at most."""
        if self._pool is None or blas.local_setter() is None:
            return 1
        bands = 1
        while bands * 2 <= self.threads and n // (bands * 2) >= MIN_BAND_ROWS:
            bands *= 2
        return bands

    def _workspace(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two n x n fp32 buffers kept across challenges (a provider answers many: no
        page faults on fresh memory inside the timed run)."""
        if self._ws is None or self._ws[0].shape[0] != n:
            self._ws = (np.zeros((n, n), np.float32), np.zeros((n, n), np.float32))
        return self._ws

    def run_chain(
        self,
        seed: bytes,
        n: int,
        rounds: int,
        stride: int,
        out: np.ndarray,
        on_rows: StepCallback,
    ) -> None:
        cur = prg.matrix(seed, b"A", n)
        np.multiply(cur, cur, out=cur)  # square(A): the first product's input
        b = prg.matrix(seed, b"B", n)
        nxt, tmp = self._workspace(n)
        bands = self.bands(n)
        if bands == 1:
            _band_chain(cur, b, nxt, tmp, rounds, stride, out[:, :, 1:], lambda c: on_rows(c, 0, n))
            return
        h = n // bands

        def band(r0: int) -> None:
            r1 = r0 + h
            with blas.single_threaded_blas():
                _band_chain(
                    cur[r0:r1], b, nxt[r0:r1], tmp[r0:r1], rounds, stride,
                    out[:, r0:r1, 1:], lambda c: on_rows(c, r0, r1),
                )  # fmt: skip

        assert self._pool is not None
        others = [self._pool.submit(band, i * h) for i in range(1, bands)]
        try:
            band(0)
        finally:
            for f in others:
                f.result()

    def bare_matmul_seconds(self, n: int, rounds: int) -> float:
        """The same chained fp32 products, nothing else: ``C_i = C_{i-1} @ B``, rounds times.

        B = C_0 = 1/n everywhere (n is a power of two) keeps every product exactly 1/n:
        no overflow, no denormals, so the values cannot make BLAS slower (or faster)."""
        b = np.full((n, n), np.float32(1.0 / n))
        cur, nxt = b.copy(), np.empty_like(b)
        np.matmul(cur, b, out=nxt)  # page in the output, wake the BLAS threads
        t0 = time.perf_counter()
        for _ in range(rounds):
            np.matmul(cur, b, out=nxt)
            cur, nxt = nxt, cur
        return time.perf_counter() - t0

    def banded_matmul_seconds(self, n: int, rounds: int) -> float:
        """``bare_matmul_seconds`` cut into the prover's row bands, one BLAS thread each:
        the bare cost of the same work done the way the prover does it (for the bench)."""
        b = np.full((n, n), np.float32(1.0 / n))
        cur, nxt = b.copy(), np.empty_like(b)
        bands = self.bands(n)
        h = n // bands

        def band(r0: int, steps: int) -> None:
            c, x = cur[r0 : r0 + h], nxt[r0 : r0 + h]
            with blas.single_threaded_blas():
                for _ in range(steps):
                    np.matmul(c, b, out=x)
                    c, x = x, c

        band(0, 1)
        t0 = time.perf_counter()
        others = [self._pool.submit(band, i * h, rounds) for i in range(1, bands)] if self._pool else []
        try:
            band(0, rounds)
        finally:
            for f in others:
                f.result()
        return time.perf_counter() - t0


class TorchBackend:
    """torch on CUDA (or CPU when asked, used by the cross-backend test)."""

    name = "torch"

    def __init__(self, torch: Any, device: str) -> None:
        self.torch = torch
        self.dev = torch.device(device)
        if self.dev.type == "cuda":
            # TF32 tensor cores: inputs in [-2, 4] are exact in TF32, accumulation is fp32.
            torch.backends.cuda.matmul.allow_tf32 = True
            self.device = torch.cuda.get_device_name(self.dev)
        else:
            self.device = "cpu"

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def run_chain(
        self,
        seed: bytes,
        n: int,
        rounds: int,
        stride: int,
        out: np.ndarray,
        on_rows: StepCallback,
    ) -> None:
        t = self.torch
        cur = t.from_numpy(prg.matrix(seed, b"A", n)).to(self.dev)
        b = t.from_numpy(prg.matrix(seed, b"B", n)).to(self.dev)
        for step in range(1, rounds + 1):
            nxt = cur.mul(cur) @ b  # square(C_{i-1}) @ B
            q = t.round(nxt * (1.0 / MODULUS))  # round half to even, like numpy rint
            nxt.sub_(q.mul_(MODULUS))
            cur = nxt
            c, r = divmod(step, stride)
            if r == 0:
                out[c - 1, :, 1:] = cur.to(t.int8).cpu().numpy()
                on_rows(c, 0, n)

    def bare_matmul_seconds(self, n: int, rounds: int) -> float:
        t = self.torch
        b = t.full((n, n), 1.0 / n, dtype=t.float32, device=self.dev)  # chained, like numpy's
        cur, nxt = b.clone(), t.empty_like(b)
        t.matmul(cur, b, out=nxt)
        self._sync()
        t0 = time.perf_counter()
        for _ in range(rounds):
            t.matmul(cur, b, out=nxt)
            cur, nxt = nxt, cur
        self._sync()
        return time.perf_counter() - t0


class CupyBackend:
    """cupy on CUDA: the numpy code path on the GPU."""

    name = "cupy"

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"cuda")
        self.device = name.decode() if isinstance(name, bytes) else str(name)

    def run_chain(
        self,
        seed: bytes,
        n: int,
        rounds: int,
        stride: int,
        out: np.ndarray,
        on_rows: StepCallback,
    ) -> None:
        cp = self.cp
        cur = cp.asarray(prg.matrix(seed, b"A", n))
        b = cp.asarray(prg.matrix(seed, b"B", n))
        for step in range(1, rounds + 1):
            nxt = (cur * cur) @ b  # square(C_{i-1}) @ B
            nxt -= MODULUS * cp.rint(nxt * np.float32(1.0 / MODULUS))
            cur = nxt
            c, r = divmod(step, stride)
            if r == 0:
                out[c - 1, :, 1:] = cp.asnumpy(cur.astype(cp.int8))
                on_rows(c, 0, n)

    def bare_matmul_seconds(self, n: int, rounds: int) -> float:
        cp = self.cp
        b = cp.full((n, n), 1.0 / n, dtype=cp.float32)  # chained, like numpy's
        cur, nxt = b.copy(), cp.empty_like(b)
        cp.matmul(cur, b, out=nxt)
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(rounds):
            cp.matmul(cur, b, out=nxt)
            cur, nxt = nxt, cur
        cp.cuda.Device().synchronize()
        return time.perf_counter() - t0


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except Exception:  # not installed, or installed without a working CUDA runtime
        return None


def cuda_device_present() -> bool:
    """A CUDA device node exists (Linux ``/dev/nvidia<N>``, WSL2 ``/dev/dxg``). Checked
    before torch or cupy is imported: importing torch costs ~1-2 s and ~300 MB in every
    node process, for nothing on a machine without a GPU."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def best_backend() -> Backend:
    """torch on CUDA, else cupy on CUDA, else numpy (without importing either when no
    CUDA device node exists)."""
    if not cuda_device_present():
        return NumpyBackend()
    torch = _optional("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return TorchBackend(torch, "cuda")
    except Exception:  # broken driver: fall through to the next backend
        pass
    cp = _optional("cupy")
    try:
        if cp is not None and cp.cuda.runtime.getDeviceCount() > 0:
            return CupyBackend(cp)
    except Exception:
        pass
    return NumpyBackend()
