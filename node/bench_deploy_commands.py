"""`kaisar bench deploy`: purchase -> first byte through the tunnel, next to the floor."""

from __future__ import annotations

import json
import sys


def register_bench(bench) -> None:
    d = bench.add_parser(
        "deploy",
        help="purchase transaction -> first byte through the tunnel vs plain docker run",
    )
    d.add_argument("--jobs", type=int, default=5, help="jobs measured (median, p95)")
    d.add_argument(
        "--chain",
        choices=["embedded", "anvil"],
        default=None,
        help="embedded: eth-tester in the devnet's process (default with --net process); anvil: a local anvil "
        "process (scripts/install-anvil.sh), as a real network's chain is outside the nodes",
    )
    d.add_argument(
        "--net",
        choices=["process", "procs"],
        default="process",
        help="process: the whole devnet in this process (default); procs: one OS process "
        "per node and an anvil chain, as operators run `kaisar node` (needs anvil)",
    )
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    import trio

    from node.bench_deploy import run_bench
    from node.errors import UserError

    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    chain = args.chain or ("anvil" if args.net == "procs" else "embedded")
    if args.net == "procs" and chain != "anvil":
        raise UserError("--net procs runs its own anvil chain: drop --chain embedded")

    def emit(run: dict) -> None:
        print(
            f"job={run['job']} total={run['total_s']:.3f}s purchased={run['purchased_s']:.3f}s "
            f"deployed_verified={run['deployed_verified_s']:.3f}s",
            file=sys.stderr,
            flush=True,
        )

    out = trio.run(run_bench, args.jobs, emit, chain, args.net)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"deploy: median={out['median_s']:.3f}s p95={out['p95_s']:.3f}s "
            f"floor_median={out['floor_median_s']:.3f}s ratio={out['ratio']} "
            f"(jobs={out['jobs']}, net {out['net']}, chain {out['chain']}, "
            f"load {out['loadavg_before']})"
        )
    return 0
