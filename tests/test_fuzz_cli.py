"""Fuzzing the CLI in-process through ``cli.main``: any argv exits 0 or 2, an error is
one line on stderr, never a traceback.

Argv is drawn from the real parser tree (every command path and its own options) mixed
with hostile values: numbers out of range, nan/inf, 1e999999999, unicode digits, empty
strings, lone dashes, and paths to missing files, directories and binary garbage.

Commands whose handlers only read local files before doing anything (``keys``, ``node
--config``, every ``client`` command) run for real; the others (benchmarks, devnet,
chain deploy, explorer, sim: they would start networks or servers on a valid argv) are
fuzzed down to their parsed arguments. Counts: docs/FUZZING.md.
"""

from __future__ import annotations

import argparse
import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

import cli

REAL = {("keys", "new"), ("keys", "show"), ("node",), *(("client", c) for c in
        ("buy", "wait", "connect", "ls", "status", "logs", "close"))}  # fmt: skip


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))
            return
    yield path, parser


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:")  # --log-level output, not the error
PARSER = cli.build_parser()
LEAVES = dict(_leaves(PARSER))
OPTIONS = {
    path: sorted({o for a in p._actions for o in a.option_strings if o not in ("-h", "--help")})
    for path, p in LEAVES.items()
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (d / "text.json").write_text('{"rpc": "http://127.0.0.1:1", "deployment": "/nonexistent"}')
    (d / "bad.toml").write_text("[node]\nrole = 5\n[p2p]\nlisten = ['not a multiaddr']\n")
    (d / "list.json").write_text("[1, 2, 3]")
    return d


def values(files: Path):
    paths = st.sampled_from(
        [str(files / n) for n in ("garbage.bin", "text.json", "bad.toml", "list.json", "missing/x")]
        + [str(files), "/", "/nonexistent", "", "-", "--"]
    )
    numbers = st.sampled_from(
        ["0", "-1", "1", "65536", "1e999999999", "nan", "inf", "-inf", "0x10", "٣", "1_000",
         "99999999999999999999999999999", "2.5", "5gwei", "0.001eth", "1e30eth", " 7 "]
    ) | st.integers(-(2**70), 2**70).map(str)  # fmt: skip
    # argv strings come from the OS: never NUL (and the CLI is not the place to test that)
    text = st.text(st.characters(exclude_characters="\x00"), max_size=30)
    return paths | numbers | text


@st.composite
def argvs(draw, files: Path):
    path = draw(st.sampled_from(sorted(LEAVES)))
    opts = OPTIONS[path]
    argv = list(path)
    vals = values(files)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 6 and opts:
            argv.append(draw(st.sampled_from(opts)))
            if draw(st.integers(0, 4)):
                argv.append(draw(vals))
        elif kind < 8:
            argv.append(draw(vals))  # a positional (job id, file) or a stray word
        else:
            argv.append(draw(st.sampled_from(["--log-level", "DEBUG", "--version", "--json", "--bogus", "-x"])))
    if draw(st.integers(0, 9)) == 0:  # words in the wrong place
        argv = draw(st.permutations(argv))
    return argv


def run_main(argv: list[str], monkeypatch) -> tuple[int, str]:
    """``cli.main(argv)`` with the heavy commands' handlers replaced by a no-op."""
    real_build = cli.build_parser

    def build(areas=None):
        parser = real_build(areas)
        for path, leaf in _leaves(parser):
            if path not in REAL and leaf.get_default("func") is not None:
                leaf.set_defaults(func=lambda args: 0)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return code, err.getvalue()


def check(argv: list[str], code: int, err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2 and "usage:" not in err:  # a group without its subcommand prints help
        lines = [ln for ln in err.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
        assert len(lines) == 1 and lines[0].startswith("kaisar: error: "), (argv, err)


@fuzz(200)
@given(data=st.data())
def test_any_argv_exits_0_or_2_with_one_line(files, monkeypatch, data):
    argv = data.draw(argvs(files))
    code, err = run_main(argv, monkeypatch)
    event(f"{argv[0]} exit={code}")
    check(argv, code, err)


@fuzz(100)
@given(argv=st.lists(st.text(st.characters(exclude_characters="\x00"), max_size=12), max_size=6))
def test_random_words_exit_0_or_2(monkeypatch, argv):
    code, err = run_main(argv, monkeypatch)
    check(argv, code, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["client", "buy", "--gpu", "cpu", "--image", "x", "--port", "80", "--hours", "1", "--max-price", v]
        for v in ("inf", "nan", "-inf", "1e999999999", "1e99999999999999999999eth", "sNaN")
    ]
    + [["keys", "show", "{garbage}"], ["node", "--role", "provider", "--config", "{garbage}"],
       ["client", "ls", "--devnet", "{garbage}"],
       ["client", "ls", "--rpc", "x", "--key", "{garbage}", "--deployment", "{garbage}"],
       ["node", "--role", "provider", "--config", "a\x85b"], ["keys", "show", "x\u2028y"],
       ["client", "status", "1\n2"], ["--bogus\r"]],
)  # fmt: skip
def test_found_by_fuzzing(files, monkeypatch, argv):
    """Each of these printed a traceback: inf/nan/huge --max-price (OverflowError,
    InvalidOperation, decimal.Overflow), a binary file as key, config or --devnet
    (UnicodeDecodeError). The last four split the error over two lines: a line break in
    an argument (U+0085 NEL, U+2028, newline, carriage return) echoed in the message."""
    argv = [a.replace("{garbage}", str(files / "garbage.bin")) for a in argv]
    code, err = run_main(argv, monkeypatch)
    check(argv, code, err)
    assert code == 2
