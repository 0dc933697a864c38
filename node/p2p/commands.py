"""Benchmarks of the p2p layer: `kaisar bench gossip`, `kaisar bench stream`, `kaisar bench hostile`."""

from __future__ import annotations

import json

from node.errors import UserError


def register_bench(bench) -> None:
    g = bench.add_parser("gossip", help="gossip latency and delivery, N nodes in one process")
    g.add_argument("--nodes", type=int, default=25)
    g.add_argument("--rate", type=float, default=2.0, help="messages per second")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--heartbeat", type=float, default=1.0, help="GossipSub heartbeat, s")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gossip)
    s = bench.add_parser("stream", help="one libp2p stream vs plain TCP, same bytes, same run")
    s.add_argument("--mib", type=int, default=64)
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stream)
    h = bench.add_parser(
        "hostile", help="a provider under attack by a hostile peer process; honest latency per attack"
    )
    h.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    h.add_argument("--streams", type=int, default=100, help="slow-loris streams the attacker holds")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hostile)


def _out(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


def cmd_gossip(args) -> int:
    import trio

    from node.p2p.bench import bench_gossip

    if not 2 <= args.nodes <= 200:
        raise UserError("--nodes must be 2..200")
    if not 0 < args.rate <= 1000 or not 0 < args.seconds <= 3600:
        raise UserError("--rate must be 0..1000 and --seconds 0..3600")
    return _out(trio.run(bench_gossip, args.nodes, args.rate, args.seconds, args.heartbeat), args.json)


def cmd_stream(args) -> int:
    import trio

    from node.p2p.bench import bench_stream

    if not 1 <= args.mib <= 4096 or not 1 <= args.repeat <= 20:
        raise UserError("--mib must be 1..4096 and --repeat 1..20")
    return _out(trio.run(bench_stream, args.mib, args.repeat), args.json)


def cmd_hostile(args) -> int:
    import trio

    from node.bench_hostile import run_hostile

    if not 0.5 <= args.seconds <= 600 or not 1 <= args.streams <= 10_000:
        raise UserError("--seconds must be 0.5..600 and --streams 1..10000")
    result = trio.run(run_hostile, args.seconds, args.streams)
    if args.json:
        return _out(result, True)
    for name, ph in result["phases"].items():
        print(f"{name:>10}: " + " ".join(f"{k}={v}" for k, v in ph.items()))
    print(
        f"provider_alive={result['provider_alive']} traced_mib {result['traced_mib_before']} -> "
        f"{result['traced_mib_after']}"
    )
    return 0
