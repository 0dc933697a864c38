"""CLI: ``kaisar sim consensus --rounds N --seed S [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from node.errors import UserError

MAX_SIM_ROUNDS = 1_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser("sim", help="deterministic protocol simulations")
    sim_sub = sim.add_subparsers(dest="sim", metavar="SIM", parser_class=type(sim))
    p = sim_sub.add_parser(
        "consensus",
        help="checker quorum under crashes, partitions and Byzantine checkers",
        description=(
            "Run every scenario (honest, f crashed of n=3f+1, partitions, Byzantine "
            "checkers) with the real rules and signatures; report safety and liveness."
        ),
    )
    p.add_argument(
        "--rounds", type=int, default=200, help="jobs (assignment instances) per scenario"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run_sim_consensus)
    sim.set_defaults(func=lambda args: _usage(sim))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_sim_consensus(args: argparse.Namespace) -> int:
    if not 1 <= args.rounds <= MAX_SIM_ROUNDS:
        raise UserError(f"--rounds must be between 1 and {MAX_SIM_ROUNDS}")
    from node.consensus.sim import run_all

    report = run_all(args.rounds, args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{'scenario':24} {'n':>2} {'byz':>3} {'crash':>5} {'assigned':>9} {'maxrnd':>6} "
            f"{'safety':>6} {'live':>4} {'equiv':>5} {'evid':>5} {'secs':>6}"
        )
        for s in report["scenarios"]:
            print(
                f"{s['name']:24} {s['checkers']:>2} {s['byzantine']:>3} {s['crashed']:>5} "
                f"{s['assigned']:>4}/{s['jobs']:<4} {s['max_rounds_to_assign']:>6} "
                f"{s['safety_violations']:>6} {s['liveness_failures']:>4} "
                f"{s['equivocations']:>5} {s['evidence_detected']:>5} {s['seconds']:>6.2f}"
            )
        print(
            f"safety_violations={report['safety_violations']} "
            f"liveness_failures={report['liveness_failures']} "
            f"evidence_missed={report['evidence_missed']} "
            f"stalled_jobs={report['stalled_jobs']}"
        )
    bad = report["safety_violations"] or report["liveness_failures"] or report["evidence_missed"]
    return 1 if bad else 0
