"""ContainerRuntime against the real private Docker Engine (scripts/dockerd.sh)."""

from __future__ import annotations

import pytest
import trio

from node.roles.provider.images import (
    BUSYBOX_IMAGE,
    DEMO_ECHO_IMAGE,
    DEMO_ECHO_PORT,
    DEMO_HTTP_IMAGE,
    DEMO_HTTP_PORT,
)
from node.roles.provider.runtime import (
    LABEL_JOB,
    LABEL_NODE,
    LABEL_PORT,
    ContainerError,
    ContainerRuntime,
    Limits,
    Reason,
)

pytest_plugins = ["docker_fixtures"]
pytestmark = pytest.mark.docker

MiB = 1024 * 1024
SMALL = Limits(memory_bytes=64 * MiB, cpus=0.5, pids=64)
# What the kernel enforces, seen from inside (cgroup v1 paths, else v2 ones).
INSIDE_VIEW = (
    "grep -E 'CapEff|NoNewPrivs' /proc/self/status;"
    " echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
    " || cat /sys/fs/cgroup/memory.max);"
    " echo pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max);"
    " echo nofile=$(ulimit -n);"
    " touch /rootfs-is-writable 2>/dev/null || echo rootfs=ro;"
    " touch /tmp/x && echo tmp=rw;"
    " exec sleep 60"
)


async def http_get(port: int, path: str = "/", timeout: float = 5.0) -> str:
    """GET http://127.0.0.1:port/path; retries while the server is still coming up
    (docker-proxy accepts and then closes until the container listens)."""
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with trio.fail_after(timeout):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            async with stream:
                await stream.send_all(request)
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
            if data.startswith(b"HTTP/"):
                return data.decode(errors="replace")
            await trio.sleep(0.05)


def labelled(client, node: str) -> list:
    return client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_NODE}={node}"})


async def test_demo_http_page_on_loopback_port(container_runtime: ContainerRuntime):
    info = await container_runtime.start(7, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    assert info.running and info.job_id == 7
    assert info.host_ip == "127.0.0.1" and info.host_port
    page = await http_get(info.host_port, "/")
    assert "200 OK" in page.splitlines()[0]
    assert "kaisar-demo-http" in page
    echo = await http_get(info.host_port, "/cgi-bin/echo?probe=abc123")
    assert "query=probe=abc123" in echo
    assert "job=7" in echo  # KAISAR_JOB_ID reaches the container


async def test_demo_echo_round_trip(container_runtime: ContainerRuntime):
    info = await container_runtime.start(8, DEMO_ECHO_IMAGE, DEMO_ECHO_PORT, limits=SMALL)
    with trio.fail_after(5):
        while True:  # until nc listens behind docker-proxy
            stream = await trio.open_tcp_stream("127.0.0.1", info.host_port)
            async with stream:
                await stream.send_all(b"ping kaisar\n")
                got = b""
                while len(got) < 12 and (chunk := await stream.receive_some(100)):
                    got += chunk
            if got == b"ping kaisar\n":
                break
            await trio.sleep(0.05)


async def test_security_policy_and_limits_applied(container_runtime, docker_client, runtime_node):
    limits = Limits(memory_bytes=96 * MiB, cpus=0.5, pids=50, read_only=True)
    info = await container_runtime.start(
        11,
        BUSYBOX_IMAGE,
        8000,
        limits=limits,
        env={"GREETING": "hi"},
        command=["sh", "-c", INSIDE_VIEW],
    )
    attrs = docker_client.api.inspect_container(info.container_id)
    hc = attrs["HostConfig"]
    assert hc["Memory"] == 96 * MiB
    assert hc["NanoCpus"] == 500_000_000
    assert hc["PidsLimit"] == 50
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["Init"] is True and hc["Privileged"] is False
    assert hc["ReadonlyRootfs"] is True and "/tmp" in hc["Tmpfs"]
    assert hc["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    bound = attrs["NetworkSettings"]["Ports"]["8000/tcp"]
    assert [b["HostIp"] for b in bound] == ["127.0.0.1"]
    assert int(bound[0]["HostPort"]) == info.host_port
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_NODE] == runtime_node and labels[LABEL_JOB] == "11"
    assert "GREETING=hi" in attrs["Config"]["Env"]
    # The kernel's view from inside: no capabilities, no privilege gain.
    out = ""
    with trio.fail_after(5):
        async with container_runtime.logs(11, follow=True) as chunks:
            async for chunk in chunks:
                out += chunk.decode()
                if "tmp=" in out:
                    break
    assert "CapEff:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert f"mem={96 * MiB}" in out and "pids=50" in out and "nofile=16384" in out
    assert "rootfs=ro" in out and "tmp=rw" in out


async def test_failed_starts_leave_no_container(
    container_runtime, docker_engine, docker_client, runtime_node
):
    # The command does not exist: docker-init exits 127 right after start.
    with pytest.raises(ContainerError) as e:
        await container_runtime.start(21, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["/nope"])
    assert e.value.reason == Reason.START_FAILED and "/nope" in e.value.message
    # A GPU device request on an engine without a GPU runtime: start fails, "Created".
    with pytest.raises(ContainerError) as e:
        await container_runtime.start(22, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, gpus=["0"], limits=SMALL)
    assert e.value.reason == Reason.START_FAILED and "GPU" in e.value.message
    # An image that is neither local nor pullable (no registry here).
    with pytest.raises(ContainerError) as e:
        await container_runtime.start(23, "localhost:1/kaisar/none:latest", 80, limits=SMALL)
    assert e.value.reason == Reason.IMAGE_MISSING
    offline = ContainerRuntime(runtime_node, docker_host=docker_engine.host, allow_pull=False)
    with pytest.raises(ContainerError) as e:
        await offline.start(24, "kaisar/not-built:latest", 80, limits=SMALL)
    offline.close()
    assert e.value.reason == Reason.IMAGE_MISSING and "pulling is disabled" in e.value.message
    assert labelled(docker_client, runtime_node) == []
    assert await container_runtime.status(21) is None


async def test_start_returns_once_the_service_answers(docker_engine, runtime_node):
    """start() does not wait out the startup grace when the service already listens:
    it probes the container's port, so the first request afterwards is answered."""
    rt = ContainerRuntime(runtime_node, docker_host=docker_engine.host, startup_grace=40)
    try:
        t0 = trio.current_time()
        info = await rt.start(35, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
        # not a speed goal: it did not sit out the 40 s grace (start is shielded, so a
        # deadline cannot interrupt it; the clock can tell)
        assert trio.current_time() - t0 < 20
        stream = await trio.open_tcp_stream("127.0.0.1", info.host_port)
        async with stream:  # one attempt, no retry: the service is up
            await stream.send_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            got = await stream.receive_some(100)
            assert got.startswith(b"HTTP/1.") and b" 200 " in got, got
        # a container that never listens on its port still starts, after the grace
        quiet = ContainerRuntime(runtime_node, docker_host=docker_engine.host, startup_grace=0.5)
        try:
            info = await quiet.start(36, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["sleep", "60"])
            assert info.running and info.host_port
        finally:
            quiet.close()
    finally:
        await rt.cleanup_all()
        rt.close()


async def test_start_is_idempotent_per_job(container_runtime: ContainerRuntime):
    first = await container_runtime.start(31, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    again = await container_runtime.start(31, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    assert again.container_id == first.container_id
    assert [c.container_id for c in await container_runtime.list_managed()] == [first.container_id]


async def test_start_creates_first_and_replaces_a_stopped_container(
    container_runtime: ContainerRuntime, monkeypatch
):
    """A first start goes straight to create (no container list, no image inspect: the
    job's name and the image come back as 409 / 404 when they need a look); a start
    over a stopped container of the job replaces it."""
    from docker.models.containers import ContainerCollection

    api = container_runtime._docker().api
    looks = []
    real_list, real_image = ContainerCollection.list, api.inspect_image

    def listing(self, *a, **k):
        looks.append("list")
        return real_list(self, *a, **k)

    monkeypatch.setattr(ContainerCollection, "list", listing)
    monkeypatch.setattr(api, "inspect_image", lambda *a, **k: looks.append("image") or real_image(*a, **k))
    first = await container_runtime.start(51, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["sleep", "60"])
    assert looks == [] and first.running
    await container_runtime.stop(51, timeout=0)
    again = await container_runtime.start(51, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["sleep", "60"])
    assert "list" in looks and again.running and again.container_id != first.container_id
    assert [c.container_id for c in await container_runtime.list_managed()] == [again.container_id]


async def test_stop_then_cleanup_leaves_nothing(container_runtime, docker_client, runtime_node):
    await container_runtime.start(41, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    await container_runtime.start(42, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    stopped = await container_runtime.stop(41)
    assert stopped is not None and stopped.state == "exited" and stopped.host_port is None
    assert (await container_runtime.status(42)).running
    assert await container_runtime.stop(999) is None
    removed = await container_runtime.cleanup_all()
    assert sorted(r.job_id for r in removed) == [41, 42]
    assert labelled(docker_client, runtime_node) == []
    assert await container_runtime.remove(41) is False


async def test_restart_adopts_live_jobs_and_removes_the_rest(
    container_runtime, docker_engine, docker_client, runtime_node
):
    live = await container_runtime.start(51, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    await container_runtime.start(52, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    await container_runtime.start(53, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)
    await container_runtime.stop(53)
    # A provider crash between create and start leaves a "created" container.
    docker_client.containers.create(
        BUSYBOX_IMAGE, labels={LABEL_NODE: runtime_node, LABEL_JOB: "55", LABEL_PORT: "8080"}
    )
    # A foreign node's container on the same engine must be left alone.
    other = ContainerRuntime(runtime_node + "-other", docker_host=docker_engine.host)
    try:
        foreign = await other.start(51, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, limits=SMALL)

        # The provider restarts: a fresh runtime, the same node address.
        restarted = ContainerRuntime(runtime_node, docker_host=docker_engine.host)
        result = await restarted.adopt_or_cleanup({51, 53, 54, 55})
        restarted.close()

        assert set(result.adopted) == {51}
        assert result.adopted[51].container_id == live.container_id
        assert result.adopted[51].host_port == live.host_port
        assert {(r.job_id, r.reason) for r in result.removed} == {
            (52, "job ended"),
            (53, "state exited"),
            (55, "state created"),
        }
        assert result.missing == {53, 54, 55}
        assert "kaisar-demo-http" in await http_get(live.host_port)
        assert [c.id for c in labelled(docker_client, runtime_node)] == [live.container_id]
        assert (await other.status(51)).container_id == foreign.container_id
    finally:
        await other.cleanup_all()
        other.close()


async def test_logs_tail_and_follow(container_runtime: ContainerRuntime):
    script = "echo first line; sleep 0.4; echo second line; exec sleep 60"
    await container_runtime.start(
        61, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["sh", "-c", script]
    )
    seen = b""
    with trio.fail_after(5):
        async with container_runtime.logs(61, follow=True) as chunks:
            async for chunk in chunks:
                seen += chunk
                if b"second line" in seen:
                    break
    assert seen.startswith(b"first line\n")
    async with container_runtime.logs(61, tail=1) as chunks:
        assert b"".join([c async for c in chunks]) == b"second line\n"
    # A follower ends when the container stops.
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def follow() -> None:
                async with container_runtime.logs(61, follow=True, tail=0) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)

            nursery.start_soon(follow)
            await trio.sleep(0.1)
            await container_runtime.stop(61, timeout=1)
    with pytest.raises(ContainerError) as e:
        async with container_runtime.logs(999) as chunks:
            async for _ in chunks:
                pass
    assert e.value.reason == Reason.NOT_FOUND


async def test_cancelled_follow_does_not_hang(container_runtime: ContainerRuntime):
    await container_runtime.start(71, BUSYBOX_IMAGE, 8000, limits=SMALL, command=["sleep", "60"])
    with trio.move_on_after(0.3) as scope:
        async with container_runtime.logs(71, follow=True) as chunks:
            async for _ in chunks:
                pass
    assert scope.cancelled_caught
