"""`kaisar explorer --config FILE` and `kaisar bench explorer`."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "explorer", help="index the network's gossip and chain events; serve the API and page"
    )
    p.add_argument("--config", required=True, help="TOML config (see configs/explorer.toml)")
    p.add_argument(
        "--port", type=int, default=None, help="HTTP port (overrides explorer.http_port)"
    )
    p.add_argument("--db", default=None, help="index file (overrides explorer.db)")
    p.set_defaults(func=cmd_explorer)


def register_bench(bench) -> None:
    p = bench.add_parser("explorer", help="signed ads validated and indexed per second (one core)")
    p.add_argument("--ads", type=int, default=5000)
    p.add_argument("--providers", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_bench)


def cmd_explorer(args) -> int:
    import dataclasses

    import trio

    from node.config import load
    from node.errors import UserError
    from node.explorer.service import run_explorer
    from node.runner import run_until_signal

    config = load(args.config)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise UserError("--port must be 0..65535")
        config = dataclasses.replace(
            config, explorer=dataclasses.replace(config.explorer, http_port=args.port)
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ex = await nursery.start(
                lambda task_status: run_explorer(config, db=args.db, task_status=task_status)
            )
            print(
                f"explorer: {ex.url}  (API {ex.url}/api/stats, peer {ex.host.peer_id})", flush=True
            )

    try:
        trio.run(run_until_signal, main)
    except OSError as exc:  # the HTTP port is taken, the index path is not writable
        raise UserError(f"explorer cannot start: {exc.strerror or exc}") from None
    return 0


def cmd_bench(args) -> int:
    from node.errors import UserError
    from node.explorer.bench import bench_explorer

    if not 100 <= args.ads <= 1_000_000:
        raise UserError("--ads must be 100..1000000")
    if not 1 <= args.providers <= args.ads:
        raise UserError("--providers must be 1..ads")
    result = bench_explorer(args.ads, args.providers)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0 if result["ok"] else 1
