"""`kaisar node --role checker` as an OS process: starts the checker services on a shared chain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("chain_fixtures")
import trio  # noqa: E402
from chain_fixtures import ANVIL_KEY  # noqa: E402
from test_provider_cli import free_port  # noqa: E402

from node.chain.client import ChainClient  # noqa: E402
from node.chain.genesis import GenesisChecker, bootstrap  # noqa: E402
from node.identity import Identity, save_keystore  # noqa: E402

pytest_plugins = ["chain_fixtures"]
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "checker-cli-pw"


async def test_cli_checker_starts_on_a_shared_chain(tmp_path, anvil):
    me = Identity.generate()
    client = await trio.to_thread.run_sync(ChainClient.connect, anvil)
    faucet = Identity(bytes.fromhex(ANVIL_KEY[2:]))
    dev = await bootstrap(client, faucet, [GenesisChecker(me, me, 10**18)], reward_pool=0)
    dev.deployment.save(tmp_path / "deployment.json")
    save_keystore(me, tmp_path / "k.json", PASSWORD, scrypt_n=2**4)
    cfg = tmp_path / "checker.toml"
    cfg.write_text(
        f'[node]\nrole = "checker"\nnetwork = "chkcli"\nkey_file = "k.json"\ndata_dir = "data"\n'
        f'[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/{free_port()}"]\ngossip_heartbeat = 0.2\n'
        f'[chain]\nrpc = "{anvil}"\nchain_id = {dev.deployment.chain_id}\ndeployment = "deployment.json"\n'
        f"[checker]\nepoch_seconds = 60\nchain_poll = 0.2\n"
    )
    log_path = tmp_path / "node.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "--log-level", "INFO", "node", "--role", "checker",
         "--config", str(cfg)],
        env={**os.environ, "KAISAR_PASSWORD": PASSWORD}, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        with trio.fail_after(40):
            while "event=checker_started" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                await trio.sleep(0.1)
        assert f"address={me.address} checkers=1" in log_path.read_text()
        assert (tmp_path / "data" / "votes.sqlite").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, log_path.read_text()[-2000:]
        log.close()


def test_cli_checker_without_chain_says_what_it_needs(tmp_path, capsys, monkeypatch):
    me = Identity.generate()
    save_keystore(me, tmp_path / "k.json", PASSWORD, scrypt_n=2**4)
    cfg = tmp_path / "checker.toml"
    cfg.write_text('[node]\nkey_file = "k.json"\n[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n')
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    import cli

    assert cli.main(["node", "--role", "checker", "--config", str(cfg)]) == 2
    assert "a checker needs a chain" in capsys.readouterr().err
