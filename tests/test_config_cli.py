"""Config loading and the CLI's user-error contract: one clear line, exit 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cli
from node import config
from node.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["provider.toml", "checker.toml"])
def test_shipped_configs_load(name):
    cfg = config.load(ROOT / "configs" / name)
    assert cfg.node.role == name.split(".")[0]


@pytest.mark.parametrize(
    "text, key",
    [
        ("[p2p]\ngossip_degree = 'six'", "p2p.gossip_degree"),
        ("[p2p]\nlisten = ['nope']", "p2p.listen"),
        ("[p2p]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']", "p2p.bootstrap"),
        ("[node]\nrole = 'miner'", "node.role"),
        ("[node]\nfoo = 1", "node.foo"),
        ("[nodes]\nrole = 'provider'", "[nodes]"),
        ("[chain]\nrpc = 'ftp://x'", "chain.rpc"),
        ("[metrics]\nport = 70000", "metrics.port"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["node", "p2p", "chain", "metrics", "x"]),
                       st.dictionaries(st.text(max_size=20), st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.lists(st.text(max_size=10), max_size=3)), max_size=4),
                       max_size=3))
def test_config_fuzz_only_config_errors(data):
    try:
        config.from_dict(data)
    except ConfigError:
        pass


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, env=env, timeout=60)


def assert_user_error(proc, text):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_help_and_version():
    out = run_cli("--help")
    assert out.returncode == 0
    for group in ("keys", "node", "bench", "devnet"):
        assert group in out.stdout
    assert run_cli("--version").stdout.startswith("kaisar ")


def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch):
    assert_user_error(run_cli("--bogus"), "unrecognized arguments")
    assert_user_error(run_cli("node", "--role", "miner", "--config", "x"), "invalid choice")
    assert_user_error(run_cli("node", "--role", "provider", "--config", str(tmp_path / "none.toml")), "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text("[p2p]\ngossip_degree = -1\n")
    assert_user_error(run_cli("node", "--role", "provider", "--config", str(bad), "--key", "k"), "p2p.gossip_degree")
    assert_user_error(run_cli("keys", "show", str(tmp_path / "nokey.json")), "not found")
    assert_user_error(run_cli("devnet", "--nodes", "0"), "--nodes")


def test_keys_new_show_roundtrip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAISAR_PASSWORD", "a-good-password")
    key = tmp_path / "k.json"
    assert cli.main(["keys", "new", "--out", str(key), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert (key.stat().st_mode & 0o777) == 0o600
    assert cli.main(["keys", "show", str(key), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["address"] == made["address"] and shown["peer_id"] == made["peer_id"]
    # refusing to overwrite, wrong password: exit 2 with a reason
    assert cli.main(["keys", "new", "--out", str(key)]) == 2
    monkeypatch.setenv("KAISAR_PASSWORD", "wrong-password")
    assert cli.main(["keys", "show", str(key)]) == 2
    assert "wrong password" in capsys.readouterr().err
