"""The explorer page in a real browser (headless Chromium) against a running network.

Chromium is the Debian package ``chromium``; the session fixture installs it with
apt-get when missing (a one-time cost) and skips, saying why, only where it cannot be
installed. The screenshot is written under the test's tmp_path (tests/artifacts is
not git-ignored) and its path printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
import trio
from test_explorer_network import explorer_config, wait_for

from node import wire
from node.devnet import start_network
from node.explorer.indexer import load_message_types
from node.explorer.service import run_explorer
from node.runner import heartbeat_loop

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot install chromium: {' '.join(cmd)}: {r.stderr.strip()[-300:]}")
    path = shutil.which("chromium")
    if not path:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return path


async def run_chromium(binary: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = await trio.run_process(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r.stdout.decode()


async def test_page_shows_running_network(chromium, tmp_path):
    load_message_types()

    async def noop(env, peer):
        pass

    async with start_network(4) as hosts, trio.open_nursery() as nursery:
        roles = ["checker", "provider", "checker", "provider"]
        for h in hosts:
            await h.subscribe("status/1", noop)
            await h.subscribe("ads/1", noop)
        for h, role in zip(hosts, roles, strict=True):
            nursery.start_soon(heartbeat_loop, h, role, 0.3)
        cfg = explorer_config([h.addrs()[0] for h in hosts], str(tmp_path / "ex.sqlite"))
        ex = await nursery.start(lambda task_status: run_explorer(cfg, task_status=task_status))
        if "ProviderAd" in wire.REGISTRY:  # providers advertise GPUs: the chart has bars
            for i, h in enumerate(hosts[1::2]):
                fields = {
                    "peer": h.peer_id.to_base58(),
                    "addrs": h.addrs()[:1],
                    "gpu_class": ("a100", "h100")[i],
                    "price_per_gpu_hour_wei": 10**15,
                    "gpus_total": 4 + 4 * i,
                    "gpus_free": 2,
                    "accepting": True,
                    "inventory": {"gpus": []},
                }
                await h.publish("ads/1", h.sign("ProviderAd", fields))

        async def all_indexed():
            return ex.store.count("providers") + ex.store.count("checkers") == 4

        await wait_for(all_indexed)
        dom = await run_chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", ex.url + "/")
        for h in hosts:
            assert f'data-address="{h.address}"' in dom, f"{h.address} not on the page"
        assert '<small id="updated">updated ' in dom, "the page's refresh did not complete"
        assert "<rect" in dom or "no GPU ads yet" in dom  # the chart rendered
        shot = tmp_path / "explorer.png"
        await run_chromium(
            chromium,
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            ex.url + "/",
        )
        assert shot.exists() and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        nursery.cancel_scope.cancel()
