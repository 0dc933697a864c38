"""CLI: `kaisar popw selftest|inventory` and `kaisar bench popw` (thin over node.popw)."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from node.consensus.committees import COMMITTEE_SIZE
from node.consensus.epochs import EPOCH_LENGTH_SECONDS
from node.errors import UserError
from node.popw.backends import best_backend
from node.popw.challenge import MAX_N, MIN_N, PopwError, is_power_of_two
from node.popw.classes import ClassTable, GpuClass, challenge_for, load_table, qualifying_class
from node.popw.inventory import Inventory, read_inventory
from node.popw.prover import Prover
from node.popw.verifier import verify_local


def register(sub: Any) -> None:
    p = sub.add_parser("popw", help="proof of physical work: selftest, GPU inventory")
    psub = p.add_subparsers(dest="popw_cmd", metavar="CMD")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    st = psub.add_parser("selftest", help="run a local PoPW challenge on the best backend")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--class", dest="gpu_class", help="class to size the challenge for")
    st.add_argument("--classes", help="GPU class table (default configs/gpu_classes.toml)")
    st.set_defaults(func=cmd_selftest)
    inv = psub.add_parser("inventory", help="GPUs seen by NVML (CPU-only when none)")
    inv.add_argument("--json", action="store_true")
    inv.set_defaults(func=cmd_inventory)


def register_bench(bench_sub: Any) -> None:
    b = bench_sub.add_parser("popw", help="PoPW prover overhead, verifier cost, duty cycle")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--sizes", default="256,1024,2048", help="comma-separated n values")
    b.add_argument("--reps", type=int, default=2)
    b.add_argument("--epoch-seconds", type=float, default=EPOCH_LENGTH_SECONDS)
    b.add_argument("--committee", type=int, default=COMMITTEE_SIZE, help="checkers per provider")
    b.add_argument("--classes", help="GPU class table (default configs/gpu_classes.toml)")
    b.set_defaults(func=cmd_bench)


def _guess_class(table: ClassTable, inv: Inventory, backend_name: str) -> GpuClass:
    """The class named like the first GPU ("NVIDIA GeForce RTX 4090" -> rtx4090), else cpu."""
    if backend_name == "numpy" or inv.cpu_only:
        return table.get("cpu")
    norm = re.sub(r"[^a-z0-9]", "", inv.gpus[0].name.lower())
    named = [c for c in table.classes.values() if re.sub(r"[^a-z0-9]", "", c.name) in norm]
    return max(named, key=lambda c: len(c.name), default=table.get("cpu"))


def selftest(table: ClassTable, gpu_class: str | None = None) -> dict[str, Any]:
    backend = best_backend()
    inv = read_inventory()
    cls = table.get(gpu_class) if gpu_class else _guess_class(table, inv, backend.name)
    ch = challenge_for(cls, table.policy)
    prover = Prover(backend)
    t0 = time.perf_counter()
    commit = prover.commit(ch)
    verdict = verify_local(ch, commit, commit.elapsed, prover.open, table.policy.openings)
    total = time.perf_counter() - t0
    qualifies = qualifying_class(table, verdict.tflops) if verdict.status != "fail" else None
    return {
        "backend": backend.name,
        "device": backend.device,
        "gpus": inv.count,
        "inventory_message": inv.message,
        "challenge_class": cls.name,
        "n": ch.n,
        "rounds": ch.rounds,
        "stride": ch.stride,
        "deadline_s": round(ch.deadline, 3),
        "verdict": verdict.status,
        "reason": verdict.reason,
        "prover_s": round(commit.elapsed, 4),
        "total_s": round(total, 4),
        "effective_tflops": round(verdict.tflops, 4),
        "qualifies_for": qualifies.name if qualifies else None,
    }


def cmd_selftest(args: argparse.Namespace) -> int:
    result = selftest(load_table(args.classes), args.gpu_class)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"backend:   {result['backend']} ({result['device']})")
        if result["inventory_message"]:
            print(f"gpus:      {result['inventory_message']}")
        print(
            f"challenge: class {result['challenge_class']}, n={result['n']}, "
            f"rounds={result['rounds']}, deadline {result['deadline_s']}s"
        )
        print(f"verdict:   {result['verdict']} {result['reason']}".rstrip())
        print(f"speed:     {result['effective_tflops']} effective TFLOPS in {result['prover_s']}s")
        print(f"qualifies: {result['qualifies_for'] or 'no class'}")
    return 0 if result["verdict"] == "pass" else 1


def cmd_inventory(args: argparse.Namespace) -> int:
    inv = read_inventory()
    if args.json:
        print(json.dumps(inv.as_dict()))
        return 0
    if inv.cpu_only:
        print(f"{inv.message} ({inv.cpu}, {inv.cpu_count} cores)")
    for g in inv.gpus:
        print(
            f"gpu{g.index}: {g.name} {g.uuid} {g.memory_total_mb} MiB, {g.temperature_c} C, {g.power_w} W"
        )
    if inv.gpus:
        print(f"driver {inv.driver_version}, CUDA {inv.cuda_version}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from node.popw.bench import run_bench

    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise UserError(
            f"--sizes must be integers separated by commas, got {args.sizes!r}"
        ) from None
    if not all(is_power_of_two(n) and MIN_N <= n <= MAX_N for n in sizes):
        raise UserError(f"--sizes must be powers of two in [{MIN_N}, {MAX_N}], got {args.sizes!r}")
    if args.reps < 1 or args.committee < 1 or args.epoch_seconds <= 0:
        raise UserError("--reps and --committee must be >= 1, --epoch-seconds > 0")
    try:
        result = run_bench(
            load_table(args.classes), sizes=sizes, reps=args.reps,
            epoch_seconds=args.epoch_seconds, committee=args.committee,
        )  # fmt: skip
    except (ValueError, PopwError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    for r in result["results"]:
        print(
            f"n={r['n']:5d} rounds={r['rounds']:5d} prover {r['prover_s']:.3f}s bare {r['bare_matmul_s']:.3f}s "
            f"prover/matmul {r['prover_over_matmul']:.3f} checker cpu {r['checker_cpu_s'] * 1e3:.1f} ms "
            f"verifier/prover {r['verifier_over_prover']:.4f} {r['effective_tflops']} TFLOPS"
        )
        if "banded_matmul_s" in r:
            print(
                f"        {r['bands']} row bands: banded matmul {r['banded_matmul_s']:.3f}s "
                f"prover/banded {r['prover_over_banded_matmul']:.3f}"
            )
    d = result["duty_cycle"]
    print(
        f"duty cycle: {d['committee']} x {d['prover_s']}s / {d['epoch_seconds']}s = {d['fraction'] * 100:.2f}%"
    )
    return 0
