"""`kaisar devnet`: a whole network in one process, on 127.0.0.1."""

from __future__ import annotations

import trio

from node.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("devnet", help="run a local network in one process (the demo)")
    p.add_argument("--nodes", type=int, default=5, help="number of nodes (2..50)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for full gossip")
    p.add_argument("--keep-running", action="store_true", help="keep the network up afterwards")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.set_defaults(func=cmd_devnet)


def cmd_devnet(args) -> int:
    from node.devnet import run_devnet
    from node.runner import run_until_signal

    if not 2 <= args.nodes <= 50:
        raise UserError("--nodes must be between 2 and 50")
    if not 1 <= args.timeout <= 3600:
        raise UserError("--timeout must be between 1 and 3600 seconds")
    result: list[bool] = []

    async def main() -> None:
        result.append(
            await run_devnet(args.nodes, timeout=args.timeout, keep_running=args.keep_running, as_json=args.json)
        )

    trio.run(run_until_signal, main)
    return 0 if result and result[0] else 1
