"""`kaisar bench tunnel`: tunnel throughput and round trip vs direct TCP and `ssh -L`."""

from __future__ import annotations

import json


def register_bench(bench) -> None:
    t = bench.add_parser(
        "tunnel",
        help="MiB/s and 100 B round trips: tunnel (direct data path and libp2p) vs TCP vs ssh -L",
    )
    t.add_argument("--mib", type=int, default=256, help="bytes moved per run (MiB)")
    t.add_argument("--libp2p-mib", type=int, default=64, help="MiB for the slower libp2p-stream path")
    t.add_argument("--round-trips", type=int, default=1000)
    t.add_argument("--repeat", type=int, default=3, help="runs per path; figures are medians")
    t.add_argument("--no-ssh", action="store_true", help="skip the ssh -L baseline")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tunnel)


def cmd_tunnel(args) -> int:
    from node.bench_tunnel import BenchError, run
    from node.errors import UserError

    if not 1 <= args.mib <= 4096 or not 1 <= args.libp2p_mib <= 4096:
        raise UserError("--mib and --libp2p-mib must be 1..4096")
    if not 1 <= args.round_trips <= 100_000 or not 1 <= args.repeat <= 20:
        raise UserError("--round-trips must be 1..100000 and --repeat 1..20")
    try:
        out = run(args.mib, args.round_trips, args.repeat, args.libp2p_mib, ssh=not args.no_ssh)
    except BenchError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(out))
        return 0
    for k, v in out.items():
        if k != "runs":
            print(f"{k:>28}: {v}")
    if "ssh_skipped" in out:
        print(f"ssh -L baseline skipped: {out['ssh_skipped']}")
    return 0
