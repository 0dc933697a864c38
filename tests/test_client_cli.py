"""`kaisar client ...`: bad input ends as one clear line and exit code 2."""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import PASSWORD, _free_port, keystore, one_error, run  # noqa: E402

from node.client.commands import parse_wei  # noqa: E402

pytest_plugins = ["chain_fixtures"]


def devnet_file(tmp_path, deployment_json="{}", **over):
    _, key = keystore(tmp_path, "buyer")
    dep = tmp_path / "deployment.json"
    dep.write_text(deployment_json)
    blob = {
        "rpc": f"http://127.0.0.1:{_free_port()}",
        "deployment": str(dep),
        "bootstrap": [],
        "network": "devnet",
        "demo_key": str(key),
        **over,
    }
    path = tmp_path / "devnet.json"
    path.write_text(json.dumps(blob))
    return path, blob


def test_missing_connection_details(capsys):
    rc, _, err = run(capsys, "client", "ls")
    one_error(rc, err, "missing --rpc, --deployment, --key: pass them or --devnet FILE")


def test_bad_devnet_file(capsys, tmp_path):
    rc, _, err = run(capsys, "client", "ls", "--devnet", str(tmp_path / "nope.json"))
    one_error(rc, err, "cannot read --devnet")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    rc, _, err = run(capsys, "client", "ls", "--devnet", str(bad))
    one_error(rc, err, "is not JSON")
    path, _ = devnet_file(tmp_path, deployment=str(tmp_path / "gone.json"))
    rc, _, err = run(capsys, "client", "ls", "--devnet", str(path))
    one_error(rc, err, "deployment file")


def test_unreachable_rpc_and_wrong_password(capsys, tmp_path, monkeypatch, world):
    path, blob = devnet_file(tmp_path, world.dep.to_json())
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    rc, _, err = run(capsys, "client", "status", "7", "--devnet", str(path))
    one_error(rc, err, f"cannot reach RPC {blob['rpc']}")
    monkeypatch.setenv("KAISAR_PASSWORD", "wrong-password")
    rc, _, err = run(capsys, "client", "ls", "--devnet", str(path))
    one_error(rc, err, "wrong password")


def parse_error(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        run(capsys, *argv)
    return info.value.code, capsys.readouterr().err


def test_bad_arguments(capsys):
    rc, err = parse_error(capsys, "client", "status", "seven")
    one_error(rc, err, "bad job id 'seven'")
    rc, err = parse_error(capsys, "client", "connect", "1", "--local-port", "70000")
    one_error(rc, err, "bad port '70000'")
    args = ["client", "buy", "--gpu", "cpu", "--image", "i", "--port", "80", "--hours", "1"]
    rc, err = parse_error(capsys, *args, "--max-price", "lots")
    one_error(rc, err, "bad amount 'lots'")


def test_parse_wei():
    assert parse_wei("123") == 123
    assert parse_wei("5gwei") == 5 * 10**9
    assert parse_wei("0.001eth") == 10**15
