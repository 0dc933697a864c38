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
from node.errors import UserError, find_user_error, leaves

# Areas whose `commands` module registers CLI groups, in --help order, with the
# top-level groups each one owns. Only the area of the command being run is imported
# (start-up stays fast); --help, `bench` and unknown commands import them all.
AREAS: dict[str, tuple[str, ...]] = {
    "node.keys_commands": ("keys",),
    "node.node_commands": ("node",),
    "node.p2p.commands": (),
    "node.roles.checker.commands": (),
    "node.popw.commands": ("popw",),
    "node.chain.commands": ("chain",),
    "node.consensus.commands": ("sim",),
    "node.client.commands": ("client",),
    "node.explorer.commands": ("explorer",),
    "node.devnet_commands": ("devnet",),
    "node.soak": ("soak",),
    "node.bench_deploy_commands": (),
    "node.bench_tunnel_commands": (),
}


def _areas_for(argv: list[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None and "--version" in argv:
        return []
    chosen = [mod for mod, groups in AREAS.items() if command in groups]
    return chosen or list(AREAS)


def one_line(message: object) -> str:
    """``message`` as one terminal line: line breaks (including the Unicode ones that
    ``str.splitlines`` honours, e.g. U+0085) and other unprintable characters that a
    user's argument or a file name carried are shown escaped, as ``repr`` writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one clear line (its default also exits 2, but prints usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kaisar: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser(areas: list[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="kaisar", description="Kaisar decentralized GPU network node")
    parser.add_argument("--version", action="version", version=f"kaisar {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    bench = sub.add_parser("bench", help="benchmarks (JSON results, see docs/BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench.set_defaults(func=lambda args: _need_sub(bench))
    for name in areas if areas is not None else list(AREAS):
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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_areas_for(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if any(area != "node.keys_commands" for area in _areas_for(argv)):
        from node.p2p.adapter import TeardownRaceLogFilter

        # py-libp2p's "libp2p" logger does not propagate: with no handler of its own,
        # its records go to logging.lastResort, not to the root handler.
        for handler in [*logging.getLogger().handlers, logging.lastResort]:
            if handler is not None:
                handler.addFilter(TeardownRaceLogFilter())
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"kaisar: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:  # trio nurseries wrap errors raised in tasks
        user_error = find_user_error(group)
        if user_error is None:
            _report_internal(group)
            return 1
        print(f"kaisar: error: {one_line(user_error)}", file=sys.stderr)
        return 2


def _report_internal(group: BaseExceptionGroup) -> None:
    """A bug, not a user error: show each real exception (libp2p nests groups deeply)."""
    import traceback

    real = [e for e in leaves(group) if not isinstance(e, KeyboardInterrupt)]
    print(f"kaisar: internal error ({len(real)} exception(s)); please report:", file=sys.stderr)
    for leaf in real:
        traceback.print_exception(type(leaf), leaf, leaf.__traceback__, limit=-8, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
