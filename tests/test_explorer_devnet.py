"""The explorer of a running devnet (the same stack `kaisar devnet` runs) shows its
providers and checkers in the API and in the page rendered by headless Chromium."""

import json
import urllib.request

import pytest
import trio
from test_explorer_browser import chromium, run_chromium  # noqa: F401  (fixture)

from node.devnet_stack import open_stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


async def test_devnet_explorer_shows_providers_and_checkers(docker_engine, chromium, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    async with open_stack(checkers=4, providers=2, workdir=tmp_path / "net") as s:
        assert s.explorer_url
        want_providers = {h.address for h in s.providers}
        want_checkers = {h.address for h in s.checkers}

        async def api(path):
            return await trio.to_thread.run_sync(get_json, s.explorer_url + path)

        with trio.fail_after(60):
            while True:
                providers = {p["address"] for p in (await api("/api/providers"))["items"]}
                checkers = {c["address"] for c in (await api("/api/checkers"))["items"]}
                if want_providers <= providers and want_checkers <= checkers:
                    break
                await trio.sleep(0.5)
        checker_rows = (await api("/api/checkers"))["items"]
        assert all(int(c.get("stake") or 0) > 0 for c in checker_rows if c["address"] in want_checkers)
        dom = await run_chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", s.explorer_url + "/")
        for address in want_providers | want_checkers:
            assert f'data-address="{address}"' in dom, f"{address} not on the page"
        shot = tmp_path / "devnet-explorer.png"
        await run_chromium(chromium, "--virtual-time-budget=5000", f"--screenshot={shot}",
                           "--window-size=1280,900", s.explorer_url + "/")
        assert shot.exists() and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
