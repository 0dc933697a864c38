"""The container policy as data (no engine needed): spec, validation, inspect parsing."""

from __future__ import annotations

import pytest

from node.roles.provider.runtime import (
    LABEL_GPUS,
    LABEL_JOB,
    LABEL_NODE,
    LABEL_PORT,
    ContainerError,
    ContainerRuntime,
    Limits,
    Reason,
    container_name,
    container_spec,
    info_from_attrs,
    validate_request,
)

NODE = "0xAbC0000000000000000000000000000000000001"


def test_spec_is_locked_down_and_published_on_loopback_only():
    spec = container_spec(NODE, 5, "kaisar/demo-http:latest", 8080, [], Limits(), {"A": "1"})
    assert spec["ports"] == {"8080/tcp": ("127.0.0.1", None)}
    assert spec["cap_drop"] == ["ALL"] and spec["cap_add"] == []
    assert spec["security_opt"] == ["no-new-privileges"]
    assert spec["init"] is True and spec["privileged"] is False
    assert spec["mem_limit"] == spec["memswap_limit"] == Limits().memory_bytes
    assert spec["nano_cpus"] == 1_000_000_000 and spec["pids_limit"] == Limits().pids
    assert spec["labels"] == {LABEL_NODE: NODE, LABEL_JOB: "5", LABEL_PORT: "8080", LABEL_GPUS: ""}
    assert spec["environment"] == {"A": "1", "KAISAR_JOB_ID": "5"}
    assert "device_requests" not in spec and "tmpfs" not in spec
    assert all(u.hard <= 20000 for u in spec["ulimits"])


def test_spec_gpus_low_port_and_read_only():
    spec = container_spec(
        NODE, 6, "img", 80, ["GPU-1234-abcd", "1"], Limits(read_only=True), {}, ["sh"]
    )
    (req,) = spec["device_requests"]
    assert req["DeviceIDs"] == ["GPU-1234-abcd", "1"] and req["Capabilities"] == [["gpu"]]
    assert spec["cap_add"] == ["NET_BIND_SERVICE"]  # root may bind port 80, nothing more
    assert spec["read_only"] is True and "/tmp" in spec["tmpfs"]
    assert spec["labels"][LABEL_GPUS] == "GPU-1234-abcd,1"
    assert spec["command"] == ["sh"]


def test_container_name_is_deterministic_and_docker_safe():
    assert container_name("node/with spaces", 3) == "kaisar-node-with-spaces-job-3"
    assert container_name(NODE, 3) == container_name(NODE, 3)


@pytest.mark.parametrize(
    "job_id,image,port,gpus,limits,env",
    [
        (-1, "img", 80, [], Limits(), {}),
        (True, "img", 80, [], Limits(), {}),
        (1, "--privileged", 80, [], Limits(), {}),
        (1, "img with space", 80, [], Limits(), {}),
        (1, "img", 0, [], Limits(), {}),
        (1, "img", 70000, [], Limits(), {}),
        (1, "img", 80, ["a b"], Limits(), {}),
        (1, "img", 80, [], Limits(memory_bytes=1024), {}),
        (1, "img", 80, [], Limits(cpus=0), {}),
        (1, "img", 80, [], Limits(pids=0), {}),
        (1, "img", 80, [], Limits(), {"BAD-KEY": "x"}),
        (1, "img", 80, [], Limits(), {"K": "a\0b"}),
    ],
)
def test_invalid_requests_are_refused(job_id, image, port, gpus, limits, env):
    with pytest.raises(ContainerError) as e:
        validate_request(job_id, image, port, gpus, limits, env)
    assert e.value.reason == Reason.INVALID


def test_info_from_inspect_data():
    attrs = {
        "Id": "c" * 64,
        "Name": "/kaisar-x-job-9",
        "Config": {
            "Image": "kaisar/demo-http:latest",
            "Labels": {LABEL_NODE: NODE, LABEL_JOB: "9", LABEL_PORT: "8080", LABEL_GPUS: "0,1"},
        },
        "State": {"Status": "running", "ExitCode": 0, "Error": ""},
        "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32771"}]}},
    }
    info = info_from_attrs(attrs)
    assert (info.job_id, info.host_port, info.gpus, info.running) == (9, 32771, ("0", "1"), True)
    assert info.name == "kaisar-x-job-9" and info.exit_code is None
    attrs["State"] = {"Status": "exited", "ExitCode": 137}
    attrs["NetworkSettings"]["Ports"] = {}
    info = info_from_attrs(attrs)
    assert (info.running, info.host_port, info.exit_code) == (False, None, 137)


async def test_unreachable_engine_is_one_clear_error(tmp_path):
    rt = ContainerRuntime(NODE, docker_host=f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ContainerError) as e:
        await rt.ping()
    assert e.value.reason == Reason.ENGINE_UNREACHABLE
    assert "scripts/dockerd.sh" in e.value.message
    with pytest.raises(ContainerError) as e:
        await rt.start(1, "kaisar/demo-http:latest", 8080)
    assert e.value.reason == Reason.ENGINE_UNREACHABLE
