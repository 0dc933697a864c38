"""A short churn soak in CI (issue #10.1): separate node processes, a stream of
purchases and a fixed fault schedule (kill -9 + restart of a provider and a checker,
a provider's network cut, a paused checker). Every job must end served, reassigned and
served again, or refunded; none lost or double-assigned; the escrow's money adds up.
The long soak is `kaisar soak --minutes 30` (docs/SOAK.md)."""

from __future__ import annotations

import json
import os

import pytest
from test_procnet import anvil_or_skip

from node.soak import SoakSettings, run_soak

pytestmark = [pytest.mark.docker, pytest.mark.anvil, pytest.mark.slow]


async def test_short_soak_loses_nothing(docker_engine, tmp_path):
    anvil_or_skip()
    load = os.getloadavg()[0]
    if load > 6 * (os.cpu_count() or 1):
        # Measured: at load average 25-42 on 2 cores a node process takes 20-35 s to
        # start and PoPW provers run 20x slower than rated, so the short soak's deadlines
        # cannot be met (docs/SOAK.md). A timing failure there would say nothing. At load
        # 8-10 (2 cores) it passed in 77-90 s.
        pytest.skip(f"machine overloaded (load average {load:.0f}): the soak's timings do not hold")
    settings = SoakSettings(
        minutes=0.6, seed=7, checkers=4, providers=2, max_live=2, buy_every=(2.0, 4.0),
        job_seconds=(60, 60), close_fraction=1.0, hold_s=(2.0, 4.0), fault_every=(5.0, 7.0),
        drain_s=240.0, status_timeout=5.0,  # drain: an upper bound, jobs end sooner on a quiet machine
        faults=("provider_cut", "checker_kill", "provider_kill", "checker_pause"), in_order=True,
    )  # fmt: skip
    lines: list[str] = []
    result = await run_soak(settings, tmp_path, docker_host=docker_engine.host, progress=lines.append)
    (tmp_path / "result.json").write_text(json.dumps({"result": result, "lines": lines}, indent=2))
    detail = (result, lines)
    assert result["jobs"] >= 1, detail
    assert result["lost"] == 0, detail
    assert result["double_assigned"] == 0, detail
    assert result["escrow_mismatch_wei"] == 0, detail
    assert result["served"] + result["reassigned"] + result["refunded"] == result["jobs"], detail
    assert {"provider_cut", "checker_kill"} <= set(result["faults"]), detail
