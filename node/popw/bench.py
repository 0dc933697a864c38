"""`kaisar bench popw`: prover overhead over bare matmul, verifier cost, provider duty cycle.

Method (docs/BENCHMARKS.md, PoPW section): for each n, one challenge with the same
work as the "cpu" class challenge (rounds capped at MAX_BENCH_ROUNDS); per repetition the
honest prover runs, then the backend's bare matmul of the same rounds x n^3, then the
checker's verification (draw k openings, prover opens, check). Figures use the fastest
repetition of each (least disturbed by other processes on a shared machine).

Each size is committed at ``commit_stride(n)`` (16 at n = 256, 1 from n = 1024 on), the
stride a checker sends at that size; where that is above 1 the row also gives
``prover_over_matmul_stride_1``, the same chain committed at every step.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

from node.popw.backends import Backend, NumpyBackend
from node.popw.challenge import MAX_COMMITS, commit_stride, new_challenge, work_flops
from node.popw.classes import ClassTable, rounds_for
from node.popw.prover import Prover
from node.popw.verifier import check_commit, check_openings, draw_openings

DEFAULT_SIZES = (256, 1024, 2048)
MAX_BENCH_ROUNDS = 1024  # keeps n = 256 to ~1 s per repetition (same work would be 6144)


def measure_size(
    backend: Backend, n: int, rounds: int, k: int, reps: int, seed: int = 0
) -> dict[str, Any]:
    prover = Prover(backend)
    rng = random.Random(seed)
    stride = commit_stride(n)  # what a checker sends at this size (challenge.py)
    rounds = math.ceil(rounds / stride) * stride
    # warm-up with the same shape: workspace, storage, band threads, BLAS threads (a
    # provider answers many challenges of its class; only the first one allocates)
    prover.commit(new_challenge(n, rounds, 600.0, stride))
    banded = getattr(backend, "banded_matmul_seconds", None)
    prover_s, bare_s, banded_s, checker_cpu_s, every_step_s = [], [], [], [], []
    for _ in range(reps):
        if stride > 1:  # the same chain committed at every step, for comparison
            every_step_s.append(prover.commit(new_challenge(n, rounds, 600.0)).elapsed)
        ch = new_challenge(n, rounds, 600.0, stride)
        commit = prover.commit(ch)
        prover_s.append(commit.elapsed)
        bare_s.append(backend.bare_matmul_seconds(n, rounds))
        if banded is not None:
            banded_s.append(banded(n, rounds))
        # OpenBLAS workers busy-wait a few ms after a product; on a real checker the
        # prover is another machine, so let them settle before timing the checker.
        time.sleep(0.1)
        c0 = time.process_time()
        requested = draw_openings(ch, k, rng)
        check_commit(ch, commit)
        c1 = time.process_time()
        openings = prover.open(ch.id, requested)  # prover's work, not the checker's
        c2 = time.process_time()
        check_openings(ch, commit, requested, openings)
        checker_cpu_s.append((c1 - c0) + (time.process_time() - c2))
    p, b, v = min(prover_s), min(bare_s), min(checker_cpu_s)
    row: dict[str, Any] = {
        "n": n,
        "rounds": rounds,
        "stride": stride,
        "k": k,
        "prover_s": round(p, 4),
        "bare_matmul_s": round(b, 4),
        "checker_cpu_s": round(v, 5),
        "prover_over_matmul": round(p / b, 3),
        "verifier_over_prover": round(v / p, 5),
        "effective_tflops": round(work_flops(n, rounds) / p / 1e12, 4),
    }
    if every_step_s:
        row["prover_over_matmul_stride_1"] = round(min(every_step_s) / b, 3)
    if banded_s:
        # The same products cut into the prover's row bands (one BLAS thread each): what
        # the proof itself costs, apart from the banding beating the BLAS's own threads.
        row["bands"] = backend.bands(n)  # type: ignore[attr-defined]
        row["banded_matmul_s"] = round(min(banded_s), 4)
        row["prover_over_banded_matmul"] = round(p / min(banded_s), 3)
    return row


def run_bench(
    table: ClassTable,
    *,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    reps: int = 2,
    epoch_seconds: float = 600.0,
    committee: int = 7,
    backend: Backend | None = None,
) -> dict[str, Any]:
    backend = backend or NumpyBackend()
    cpu = table.get("cpu")
    k = table.policy.openings
    work = work_flops(cpu.n, rounds_for(cpu, table.policy))
    load_before = os.getloadavg()[0]
    results = []
    for n in sizes:
        rounds = min(MAX_BENCH_ROUNDS, MAX_COMMITS, max(1, math.ceil(work / work_flops(n, 1))))
        results.append(measure_size(backend, n, rounds, k, reps))
    cpu_row = next((r for r in results if r["n"] == cpu.n), results[-1])
    # Each epoch a committee of checkers challenges the provider once each; the GPU is
    # busy with PoPW for committee * prover time out of the epoch.
    duty = committee * cpu_row["prover_s"] / epoch_seconds
    return {
        "bench": "popw",
        "backend": backend.name,
        "device": backend.device,
        "work_flops": work,
        "results": results,
        "duty_cycle": {
            "class": "cpu",
            "committee": committee,
            "epoch_seconds": epoch_seconds,
            "prover_s": cpu_row["prover_s"],
            "fraction": round(duty, 5),
        },
        # other processes on the machine distort every figure: say how busy it was
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
        "targets": {"prover_over_matmul": 1.15, "verifier_over_prover_at_2048": 0.01},
    }
