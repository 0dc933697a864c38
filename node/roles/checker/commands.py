"""`kaisar bench quorum`: registered under `kaisar bench` (see node/roles/checker/bench.py)."""

from __future__ import annotations

import json


def register(sub) -> None:
    pass  # no top-level command: the checker runs through `kaisar node --role checker`


def register_bench(bench) -> None:
    q = bench.add_parser(
        "quorum", help="proposal -> QC latency and messages per decision, 4/7/16 checkers"
    )
    q.add_argument("--checkers", type=int, nargs="+", default=[4, 7, 16])
    q.add_argument("--jobs", type=int, default=20, help="decisions measured per size")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quorum)


def cmd_quorum(args) -> int:
    import trio

    from node.roles.checker.bench import run_bench

    out = trio.run(run_bench, tuple(args.checkers), args.jobs)
    if args.json:
        print(json.dumps(out))
    else:
        for r in out["results"]:
            if "error" in r:
                print(f"checkers={r['checkers']:3d} error: {r['error']}")
                continue
            print(
                f"checkers={r['checkers']:3d} p50={r['p50_ms']:7.1f} ms p95={r['p95_ms']:7.1f} ms "
                f"all_p50={r['all_p50_ms']:7.1f} ms messages/decision={r['messages_per_decision']}"
            )
    return 1 if any("error" in r for r in out["results"]) else 0
