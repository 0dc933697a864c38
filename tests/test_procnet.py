"""Issue #6 "done when" with separate OS processes: a provider started from the CLI
(`kaisar node --role provider --config F`) advertises, answers PoPW from a checker
process, runs a certified container bought with `kaisar client buy`, `kaisar client
wait` verifies it, and `kaisar client connect` serves HTTP from it through the
authorized tunnel. Every node is its own process on a shared anvil chain (node/procnet.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import docker
import pytest
import trio

from node.identity import Identity
from node.procnet import PASSWORD, free_port, http_get, open_procnet

pytestmark = [pytest.mark.docker, pytest.mark.anvil, pytest.mark.slow]


def anvil_or_skip() -> None:
    from chain_fixtures import anvil_path

    if anvil_path() is None:
        pytest.skip("anvil not installed: run scripts/install-anvil.sh")
        time.sleep(0.3)


def run_client(net, *args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    out = subprocess.run(net.client_argv(*args), env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert out.returncode == 0, (args, out.stdout, out.stderr[-3000:])
    return out


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    with trio.move_on_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def containers(docker_host: str, node: str, job: int, *, running: bool = False) -> list:
    client = docker.DockerClient(base_url=docker_host)
    try:
        return client.containers.list(
            all=not running, filters={"label": [f"kaisar.node={node}", f"kaisar.job={job}"]}
        )
    finally:
        client.close()


async def test_cli_provider_process_serves_a_certified_container_and_survives_kill9(
    docker_engine, tmp_path
):
    """#6 done-when, then restart safety (#10.2) for the provider and the client:
    a provider killed with kill -9 re-adopts the running container of a live job (the
    same container serves through a new tunnel) and stops the container of a job closed
    while it was down; `kaisar client wait` / `connect` killed with kill -9 are simply
    run again (the client's state is the chain)."""
    anvil_or_skip()
    env = {**net_env(), "DOCKER_HOST": docker_engine.host}
    async with open_procnet(
        tmp_path, checkers=1, providers=1, docker_host=docker_engine.host,
        provider_opts={"max_gpus": 2},
        checker_opts={"status_timeout": 120.0},  # the provider's restart is not certified as a failure
    ) as net:  # fmt: skip
        checker, provider = net.checkers[0], net.providers[0]
        other = Identity.generate()  # a second user, in this process (the CLI is the first)
        await net.dev.fund(other.address, 100 * 10**18)
        async with net.client(key=other) as client:
            # advertises: a client hears the provider's signed ad with free CPU slots
            offers = await client.fitting_offers("cpu", 1, wait=30)
            assert [o.provider for o in offers] == [provider.address]
            # answers PoPW: the checker process challenged it, attested PASS, formed the QC
            qc = await checker.wait_line("event=popw_qc ", f"provider={provider.address} verdict=1", timeout=90)
            epoch = qc.split("epoch=")[1].split()[0]
            assert f"event=popw_attested epoch={epoch} provider={provider.address} verdict=1" in checker.log_text()

            # runs a certified container bought with `kaisar client buy`
            bought = await trio.to_thread.run_sync(lambda: run_client(
                net, "buy", "--gpu", "cpu", "--image", "kaisar/demo-http:latest", "--port", "8080",
                "--hours", "1", "--json", env=env))  # fmt: skip
            job = json.loads(bought.stdout)["job_id"]
            # a `kaisar client wait` killed with kill -9 is run again and verifies
            waiter = subprocess.Popen(net.client_argv("wait", str(job), "--timeout", "120"), env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            gone = await client.buy("cpu", 1, "kaisar/demo-http:latest", 8080, hours=1)
            waiter.send_signal(signal.SIGKILL)
            waiter.wait(timeout=10)
            waited = await trio.to_thread.run_sync(
                lambda: run_client(net, "wait", str(job), "--timeout", "120", env=env)
            )
            assert f"job {job} deployed" in waited.stdout and "QC by" in waited.stdout
            await client.wait_deployed(gone, timeout=120)
            assert "event=deploy_refused" not in provider.log_text()
            (before,) = containers(docker_engine.host, provider.address, job, running=True)

            # serves it through the authorized tunnel of `kaisar client connect`
            port = free_port()

            def connect() -> subprocess.Popen:
                return subprocess.Popen(net.client_argv("connect", str(job), "--local-port", str(port)),
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

            async def get() -> bytes:
                answer = await trio.to_thread.run_sync(http_get, port, f"/cgi-bin/echo?job={job}", 120.0)
                assert b" 200 " in answer.split(b"\r\n")[0], answer[:200]
                assert f"job={job}".encode() in answer
                return answer

            tunnel = connect()
            try:
                await get()
                await provider.wait_log(f"event=tunnel_open job={job}", timeout=5)
                tunnel.send_signal(signal.SIGKILL)  # the client's tunnel dies with its process
                tunnel.wait(timeout=10)

                # the provider dies too; its containers keep running on the engine
                provider.kill9()
                await client.close(gone)  # a job that ends while the provider is down
                offset = provider.start()
                await provider.wait_log(f"event=job_adopted job={job}", offset=offset, timeout=90)
                await provider.wait_log(f"event=job_ended job={gone} state=stopped", offset=offset, timeout=60)
                assert not containers(docker_engine.host, provider.address, gone, running=True)
                (after,) = containers(docker_engine.host, provider.address, job, running=True)
                assert after.id == before.id  # re-adopted, not replaced
                tunnel = connect()  # a new client process, the restarted provider, the same container
                await get()
            finally:
                stop(tunnel)
        for node in net.nodes:
            assert "Traceback" not in node.log_text(), node.name


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
