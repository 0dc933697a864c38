"""`kaisar chain deploy|check`: success paths and one clear error line for each bad input."""

import json

import pytest

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import _free_port, keystore, one_error, run  # noqa: E402

pytest_plugins = ["chain_fixtures"]
from chain_fixtures import PASSWORD  # noqa: E402


def test_deploy_embedded_json(capsys, tmp_path):
    out_file = tmp_path / "dep.json"
    rc, out, err = run(
        capsys, "chain", "deploy", "--rpc", "embedded", "--json", "--out", str(out_file)
    )
    assert rc == 0, err
    blob = json.loads(out)
    assert json.loads(out_file.read_text()) == blob
    assert set(blob["source_hashes"]) == {"License", "Staking", "Escrow", "Rewards"}
    assert blob["params"]["min_stake"] > 0 and blob["block"] >= 1


def test_deploy_embedded_with_key_and_summary(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    who, path = keystore(tmp_path)
    rc, out, err = run(capsys, "chain", "deploy", "--rpc", "embedded", "--key", str(path))
    assert rc == 0, err
    assert "Staking" in out and "embedded chain" in out


def test_deploy_refuses_to_overwrite(capsys, tmp_path):
    out_file = tmp_path / "dep.json"
    out_file.write_text("{}")
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "embedded", "--out", str(out_file))
    one_error(rc, err, "refusing to overwrite")
    rc, _, err = run(
        capsys, "chain", "deploy", "--rpc", "embedded", "--out", str(tmp_path / "no" / "x")
    )
    one_error(rc, err, "does not exist")


def test_unreachable_rpc(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    _, path = keystore(tmp_path)
    url = f"http://127.0.0.1:{_free_port()}"
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", url, "--key", str(path))
    one_error(rc, err, f"cannot reach RPC {url}")
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "ftp://x", "--key", str(path))
    one_error(rc, err, "unsupported RPC URL")


def test_key_problems(capsys, tmp_path, monkeypatch):
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "http://127.0.0.1:1")
    one_error(rc, err, "--key is required")
    monkeypatch.setenv("KAISAR_PASSWORD", "wrong-password")
    _, path = keystore(tmp_path)
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "embedded", "--key", str(path))
    one_error(rc, err, "wrong password")
    rc, _, err = run(
        capsys, "chain", "deploy", "--rpc", "embedded", "--key", str(tmp_path / "nope")
    )
    one_error(rc, err, "not found")


def test_wrong_chain_id(capsys):
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "embedded", "--chain-id", "1")
    one_error(rc, err, "not 1 (--chain-id)")


def test_reverting_parameters_fail_before_sending(capsys):
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", "embedded", "--min-stake", "0")
    one_error(rc, err, "min stake is zero")


def test_check_bad_files(capsys, tmp_path):
    rc, _, err = run(
        capsys, "chain", "check", "--rpc", "http://127.0.0.1:1", "--deployment", str(tmp_path / "x")
    )
    one_error(rc, err, "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "chain_id": 5}')
    rc, _, err = run(
        capsys, "chain", "check", "--rpc", "http://127.0.0.1:1", "--deployment", str(bad)
    )
    one_error(rc, err, "not a Kaisar deployment file")
    bad.write_text("not json")
    rc, _, err = run(
        capsys, "chain", "check", "--rpc", "http://127.0.0.1:1", "--deployment", str(bad)
    )
    one_error(rc, err, "not a Kaisar deployment file")


def test_check_embedded_refused(capsys, world, tmp_path):
    f = tmp_path / "d.json"
    world.dep.save(f)
    rc, _, err = run(capsys, "chain", "check", "--rpc", "embedded", "--deployment", str(f))
    one_error(rc, err, "embedded chain lives in one process")


def test_chain_group_without_command(capsys):
    rc, _, err = run(capsys, "chain")
    assert rc == 2 and "deploy" in err


def test_bench_chain_gas_covers_every_function(capsys):
    from node.chain.compile import compile_all

    rc, out, err = run(capsys, "bench", "chain-gas")
    assert rc == 0, err
    gas = json.loads(out)
    measured = {k.split(" ")[0] for k in gas}
    for name, art in compile_all().items():
        for item in art.abi:
            if item["type"] == "function" and item["stateMutability"] in ("nonpayable", "payable"):
                assert f"{name}.{item['name']}" in measured, f"{name}.{item['name']} not measured"
    assert all(0 < v < 1_000_000 for v in gas.values())
