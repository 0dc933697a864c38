"""`kaisar devnet`: a whole network in one process, on 127.0.0.1."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from node.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "devnet",
        help="run a local network in one process (chain, checkers, providers, explorer)",
        description="Start a whole network on 127.0.0.1. With --demo, an end-user buys a "
        "container, waits for the certified deployment and talks to it through a tunnel.",
    )
    p.add_argument("--demo", action="store_true", help="play an end-user through every step")
    p.add_argument("--checkers", type=int, default=4, help="checkers (4..16)")
    p.add_argument("--providers", type=int, default=3, help="providers (1..8)")
    p.add_argument("--chain", choices=["embedded", "anvil"], default="embedded",
                   help="embedded eth-tester (default) or a local anvil (needed by outside `kaisar client`)")
    p.add_argument("--workdir", type=Path, help="state directory (default: a fresh temp dir)")
    p.add_argument("--keep-running", action="store_true", help="keep the network up afterwards")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--gossip-only", action="store_true",
                   help="only N p2p nodes exchanging signed heartbeats (no chain, no docker)")
    p.add_argument("--nodes", type=int, default=5, help="with --gossip-only: number of nodes (2..50)")
    p.add_argument("--timeout", type=float, default=60.0, help="with --gossip-only: seconds to wait")
    p.set_defaults(func=cmd_devnet)


def cmd_devnet(args) -> int:
    from node.runner import run_until_signal

    result: list[bool] = []
    if not 2 <= args.nodes <= 50:
        raise UserError("--nodes must be between 2 and 50")
    if not 1 <= args.timeout <= 3600:
        raise UserError("--timeout must be between 1 and 3600 seconds")
    if args.gossip_only:
        from node.devnet import run_devnet

        async def gossip() -> None:
            result.append(await run_devnet(args.nodes, timeout=args.timeout,
                                           keep_running=args.keep_running, as_json=args.json))

        trio.run(run_until_signal, gossip)
        return 0 if result and result[0] else 1

    if not 4 <= args.checkers <= 16:
        raise UserError("--checkers must be between 4 and 16 (a quorum needs n >= 3f+1)")
    if not 1 <= args.providers <= 8:
        raise UserError("--providers must be between 1 and 8")
    from node.demo import run_demo

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kaisar-devnet-"))

    async def main() -> None:
        result.append(await run_demo(
            workdir, as_json=args.json, demo=args.demo, keep_running=args.keep_running,
            checkers=args.checkers, providers=args.providers, chain=args.chain,
        ))

    trio.run(run_until_signal, main)
    return 0 if result and result[0] else 1
