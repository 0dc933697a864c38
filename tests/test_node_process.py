"""Real `kaisar node` OS processes find each other over TCP, gossip, and stop on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.identity import Identity, save_keystore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "KAISAR_PASSWORD": "process-test-pw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kaisar(*args):
    return [sys.executable, str(ROOT / "cli.py"), *args]


def new_key(path):
    # A cheap KDF for throwaway test keys; `kaisar keys new` itself is tested in test_config_cli.
    ident = Identity.generate()
    save_keystore(ident, path, ENV["KAISAR_PASSWORD"], scrypt_n=2**4)
    return {"address": ident.address, "peer_id": ident.peer_id.to_base58()}


def write_config(path, port, bootstrap=()):
    boot = ", ".join(f'"{b}"' for b in bootstrap)
    path.write_text(
        f'[node]\nnetwork = "proc"\n[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/{port}"]\n'
        f"bootstrap = [{boot}]\nheartbeat_interval = 0.3\ngossip_heartbeat = 0.2\n"
    )


def wait_for_log(path, needle, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path}:\n{text[-2000:]}")


@pytest.mark.slow
def test_three_processes_gossip_and_stop_cleanly(tmp_path):
    keys = [new_key(tmp_path / f"k{i}.json") for i in range(3)]
    ports = [free_port() for _ in range(3)]
    boot = f"/ip4/127.0.0.1/tcp/{ports[0]}/p2p/{keys[0]['peer_id']}"
    procs, logs = [], []
    try:
        for i in range(3):
            cfg = tmp_path / f"n{i}.toml"
            write_config(cfg, ports[i], [] if i == 0 else [boot])
            log = tmp_path / f"n{i}.log"
            logs.append(log)
            # providers run without a chain (they advertise, accepting nothing); a
            # checker needs a chain and is tested in test_checker_cli.py
            role = "provider"
            procs.append(subprocess.Popen(
                kaisar("--log-level", "INFO", "node", "--role", role, "--config", str(cfg), "--key", str(tmp_path / f"k{i}.json")),
                env=ENV, stdout=subprocess.DEVNULL, stderr=log.open("w")))
        # every node hears every other node's signed heartbeat (1 and 2 only via gossip relay or DHT)
        for i, log in enumerate(logs):
            for j, key in enumerate(keys):
                if i != j:
                    wait_for_log(log, f"address={key['address']}")
        # each node stops promptly on its own SIGTERM (one at a time, so the
        # others' shutdown does not share the measurement)
        for p in procs:
            t = time.monotonic()
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=10) == 0
            # catches a shutdown that hangs on a task or connection (it would run into
            # the 10 s wait above); not a speed goal, so loose enough for a loaded CI box
            assert time.monotonic() - t < 5.0
        for log in logs:
            text = log.read_text()
            assert "event=shutdown signal=SIGTERM" in text
            assert "Traceback" not in text
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
