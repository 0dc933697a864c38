"""`kaisar node --role provider` as an OS process advertises signed capacity on ads/1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import trio

import node.roles.provider.messages  # noqa: F401  (registers ProviderAd on ads/1)
from node.devnet import FAST_GOSSIP
from node.eip712 import Domain
from node.identity import Identity, save_keystore
from node.p2p.host import HostOptions, open_host

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "provider-cli-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_provider_advertises(tmp_path):
    ident = Identity.generate()
    save_keystore(ident, tmp_path / "k.json", PASSWORD, scrypt_n=2**4)
    port = free_port()
    cfg = tmp_path / "provider.toml"
    cfg.write_text(
        f'[node]\nnetwork = "provcli"\nkey_file = "k.json"\ndata_dir = "data"\n'
        f'[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/{port}"]\ngossip_heartbeat = 0.2\n'
        f'[provider]\nad_interval = 0.3\nmax_gpus = 2\nprice_per_gpu_hour_wei = 12345\n'
        f'docker_host = "unix://{tmp_path}/no-engine.sock"\n'
    )
    log = (tmp_path / "node.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "--log-level", "INFO", "node", "--role", "provider",
         "--config", str(cfg)],
        env={**os.environ, "KAISAR_PASSWORD": PASSWORD}, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        with trio.fail_after(30):
            while "event=provider_started" not in (tmp_path / "node.log").read_text():
                assert proc.poll() is None, (tmp_path / "node.log").read_text()
                await trio.sleep(0.1)
        boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id.to_base58()}"
        opts = HostOptions(bootstrap=[boot], gossip=FAST_GOSSIP, dht=False)
        async with open_host(Identity.generate(), network="provcli", domain=Domain(1337), options=opts) as host:
            got = trio.Event()
            ads = []

            async def on_ad(env, peer):
                if env.signer == ident.address:
                    ads.append(env)
                    got.set()

            await host.subscribe("ads/1", on_ad)
            with trio.fail_after(30):
                await got.wait()
        body = ads[0].body
        assert body["price_per_gpu_hour_wei"] == 12345 and body["gpus_total"] == 2
        # no engine and no chain deployment: it says so instead of offering capacity
        assert body["accepting"] is False and body["gpus_free"] == 0
        assert body["peer"] == ident.peer_id.to_base58()
        assert (tmp_path / "data" / "provider.sqlite").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        log.close()
