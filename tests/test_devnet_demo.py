"""The README's main job, as a user runs it: `kaisar devnet --demo --json`.

A separate OS process runs the whole network (embedded chain, 4 checkers, 3 providers
on the private Docker Engine, explorer) and plays an end-user through every seed step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "starting", "docker_engine", "network_up", "wallet", "popw_certified", "purchased",
    "recorded_on_chain", "deployed_verified", "tunnel_listening", "request_through_tunnel",
    "closed", "result",
]

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_devnet_demo_runs_every_seed_step(docker_engine, tmp_path):
    env = {**os.environ, "DOCKER_HOST": docker_engine.host}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "devnet", "--demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    steps = [line["step"] for line in lines if "step" in line]
    assert [s for s in steps if s in STEPS] == STEPS, steps
    assert all(isinstance(line["t"], float | int) for line in lines if "step" in line)
    by_step = {line["step"]: line for line in lines if "step" in line}
    assert by_step["request_through_tunnel"]["ok"] is True
    assert by_step["deployed_verified"]["signed_stake_share"] >= 2 / 3
    assert by_step["closed"]["refund_eth"] > 0
    assert by_step["closed"]["container"] == "stopped"  # the provider was told of the close
    final = lines[-1]
    assert final["ok"] is True and final["time_to_service_s"] > 0
    # what an outside client needs to join was written
    info = json.loads((tmp_path / "devnet.json").read_text())
    assert info["bootstrap"] and Path(info["deployment"]).exists() and Path(info["demo_key"]).exists()
    # the devnet removed every container it started
    leftover = docker_engine.client.containers.list(all=True, filters={"label": "kaisar.job"})
    mine = [c for c in leftover if c.labels.get("kaisar.node") in {line.get("provider") for line in lines}]
    assert mine == []
