"""Issue #6 "done when" with separate OS processes: a provider started from the CLI
(`kaisar node --role provider --config F`) advertises, answers PoPW from a checker
process, runs a certified container bought with `kaisar client buy`, `kaisar client
wait` verifies it, and `kaisar client connect` serves HTTP from it through the
authorized tunnel. Every node is its own process on a shared anvil chain (node/procnet.py)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import trio

from node.identity import Identity
from node.procnet import PASSWORD, free_port, open_procnet

pytestmark = [pytest.mark.docker, pytest.mark.anvil, pytest.mark.slow]


def anvil_or_skip() -> None:
    from chain_fixtures import anvil_path

    if anvil_path() is None:
        pytest.skip("anvil not installed: run scripts/install-anvil.sh")


def http_get(port: int, path: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                answer = b"".join(chunks)
                if answer:
                    return answer
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no HTTP answer on 127.0.0.1:{port}")
        time.sleep(0.3)


def run_client(net, *args: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    out = subprocess.run(net.client_argv(*args), env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert out.returncode == 0, (args, out.stdout, out.stderr[-3000:])
    return out


async def test_cli_provider_process_advertises_proves_deploys_and_tunnels(docker_engine, tmp_path):
    anvil_or_skip()
    env = {**net_env(), "DOCKER_HOST": docker_engine.host}
    async with open_procnet(tmp_path, checkers=1, providers=1, docker_host=docker_engine.host) as net:
        checker, provider = net.checkers[0], net.providers[0]
        # advertises: a client hears the provider's signed ad with a free CPU slot
        async with net.client(key=Identity.generate()) as client:  # an observer
            offers = await client.fitting_offers("cpu", 1, wait=30)
        assert [o.provider for o in offers] == [provider.address]
        # answers PoPW: the checker process challenged it, attested PASS, formed the QC
        await checker.wait_log(f"event=popw_qc epoch=0 provider={provider.address} verdict=1", timeout=40)
        assert f"event=popw_attested epoch=0 provider={provider.address} verdict=1" in checker.log_text()

        bought = await trio.to_thread.run_sync(lambda: run_client(
            net, "buy", "--gpu", "cpu", "--image", "kaisar/demo-http:latest", "--port", "8080",
            "--hours", "1", "--json", env=env))  # fmt: skip
        job = json.loads(bought.stdout)["job_id"]
        waited = await trio.to_thread.run_sync(
            lambda: run_client(net, "wait", str(job), "--timeout", "60", env=env)
        )
        assert f"job {job} deployed" in waited.stdout and "QC by" in waited.stdout
        # the certified deploy really ran in the provider process
        await provider.wait_log(f"job={job}", timeout=5)
        assert "event=deploy_refused" not in provider.log_text()

        port = free_port()
        connect = subprocess.Popen(
            net.client_argv("connect", str(job), "--local-port", str(port)),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            answer = await trio.to_thread.run_sync(http_get, port, f"/cgi-bin/echo?job={job}")
            assert b" 200 " in answer.split(b"\r\n")[0], answer[:200]
            assert f"job={job}".encode() in answer
        finally:
            connect.send_signal(signal.SIGINT)
            connect.wait(timeout=10)
        await provider.wait_log(f"event=tunnel_open job={job}", timeout=5)
        for node in net.nodes:
            assert "Traceback" not in node.log_text(), node.name


def net_env() -> dict:
    import os

    return {**os.environ, "KAISAR_PASSWORD": PASSWORD}


def test_checker_popw_sizing_and_timeouts_come_from_the_config():
    from node.config import ConfigError, from_dict
    from node.roles.checker.node import class_table
    from node.roles.checker.service import CheckerSettings

    cfg = from_dict({"checker": {"popw_target_seconds": 0.3, "popw_allowance_seconds": 4,
                                 "popw_attempts": 40, "deploy_timeout": 20}})  # fmt: skip
    table = class_table(cfg)
    assert table is not None
    assert (table.policy.target_seconds, table.policy.network_allowance_seconds) == (0.3, 4.0)
    settings = CheckerSettings.from_config(cfg.checker)
    assert (settings.popw_attempts, settings.deploy_timeout) == (40, 20.0)
    assert class_table(from_dict({})) is None  # default: the service loads gpu_classes.toml
    with pytest.raises(ConfigError, match="checker.popw_target_seconds"):
        from_dict({"checker": {"popw_target_seconds": -1}})
    with pytest.raises(ConfigError, match="checker.popw_attempts"):
        from_dict({"checker": {"popw_attempts": 0}})
