"""`kaisar`: the one binary. Thin: parse arguments, then call into ``node``.

Each area of ``node`` owns its subcommands in a ``commands`` module exposing
``register(subparsers)`` (top-level groups) and optionally ``register_bench(bench_subparsers)``.
A handler takes the parsed ``args`` and returns an exit code. Errors a user can cause
raise ``node.errors.UserError`` (or an area error listed in USER_ERRORS) and end as one
line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from node import __version__
from node.errors import UserError

# Areas whose `commands` module registers CLI groups, in --help order.
AREAS = [
    "node.keys_commands",
    "node.node_commands",
    "node.popw.commands",
    "node.chain.commands",
    "node.consensus.commands",
    "node.client.commands",
    "node.explorer.commands",
    "node.devnet_commands",
]


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one clear line (its default also exits 2, but prints usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kaisar: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kaisar", description="Kaisar decentralized GPU network node")
    parser.add_argument("--version", action="version", version=f"kaisar {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    bench = sub.add_parser("bench", help="benchmarks (JSON results, see docs/BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench.set_defaults(func=lambda args: _need_sub(bench))
    for name in AREAS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        if hasattr(mod, "register"):
            mod.register(sub)
        if hasattr(mod, "register_bench"):
            mod.register_bench(bench_sub)
    return parser


def _need_sub(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"kaisar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
