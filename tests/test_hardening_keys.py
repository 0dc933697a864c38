"""Keys: keystore files are 0600, the password comes from $KAISAR_PASSWORD or a prompt,
never from argv, and never appears in output or logs (real `kaisar` processes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-correct-horse-battery"


def kaisar(*args: str, password: str | None = SECRET, umask: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KAISAR_PASSWORD"}
    if password is not None:
        env["KAISAR_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "--log-level", "DEBUG", *args],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )  # fmt: skip


def test_keystore_is_0600_even_with_a_permissive_umask_and_password_never_printed(tmp_path):
    out = tmp_path / "k.json"
    new = kaisar("keys", "new", "--out", str(out), umask=0)  # umask 0 would give 0666
    assert new.returncode == 0, new.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert SECRET not in out.read_text()  # the keystore holds the scrypt-encrypted key only
    show = kaisar("keys", "show", str(out), "--json")
    assert show.returncode == 0, show.stderr
    wrong = kaisar("keys", "show", str(out), password="not-the-password-1")
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr
    for proc in (new, show, wrong):  # DEBUG logging on, and still no password anywhere
        assert SECRET not in proc.stdout and SECRET not in proc.stderr


def test_no_password_flag_exists(tmp_path):
    """No command takes a password (or any secret) as an argument: argv is visible to
    every local user (ps, /proc/<pid>/cmdline) and ends up in shell history."""
    import argparse

    import cli

    def options(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from options(sub)
            yield from action.option_strings

    flags = set(options(cli.build_parser()))
    assert flags and not [f for f in flags if any(w in f.lower() for w in ("pass", "secret", "private"))]
    proc = kaisar("keys", "new", "--out", str(tmp_path / "k.json"), "--password", SECRET, password=None)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr, proc.stderr
    assert not (tmp_path / "k.json").exists()


def test_without_env_or_terminal_the_password_is_refused_not_guessed(tmp_path):
    proc = kaisar("keys", "new", "--out", str(tmp_path / "k.json"), password=None)
    assert proc.returncode == 2 and "KAISAR_PASSWORD" in proc.stderr
    assert not (tmp_path / "k.json").exists()
