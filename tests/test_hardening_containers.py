"""Job containers against the real Docker Engine: the security policy, read from
``docker inspect`` of the container the provider created. Each assertion is one setting
of node/roles/provider/runtime.py ``container_spec``; removing the setting fails it."""

from __future__ import annotations

import pytest

from node import config
from node.roles.provider.images import BUSYBOX_IMAGE
from node.roles.provider.service import ProviderSettings

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


def settings_from_config(**provider) -> ProviderSettings:
    """The provider's container limits exactly as `kaisar node` builds them from TOML."""
    return ProviderSettings.from_config(config.from_dict({"provider": provider}).provider)


async def _inspect(runtime, client, job, port, settings, command=("sleep", "30")):
    info = await runtime.start(job, BUSYBOX_IMAGE, port, limits=settings.limits, command=list(command))
    return info, client.api.inspect_container(info.container_id)


async def test_container_security_policy_from_config(container_runtime, docker_client):
    s = settings_from_config(memory_mb=80, cpus=0.25, pids=40, read_only_rootfs=True, tmpfs_mb=8)
    info, attrs = await _inspect(container_runtime, docker_client, 21, 8080, s)
    hc = attrs["HostConfig"]
    # never privileged, every capability dropped, none added back for a high port
    assert hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    # no privilege gain through setuid binaries
    assert "no-new-privileges" in (hc["SecurityOpt"] or [])
    # read-only root filesystem from [provider] read_only_rootfs, /tmp a bounded tmpfs
    assert hc["ReadonlyRootfs"] is True
    assert "size=8388608" in hc["Tmpfs"]["/tmp"] and "nosuid" in hc["Tmpfs"]["/tmp"]
    # resource limits from the config: memory (no extra swap), CPU, pids, open files
    assert hc["Memory"] == 80 * MiB and hc["MemorySwap"] == 80 * MiB
    assert hc["NanoCpus"] == 250_000_000
    assert hc["PidsLimit"] == 40
    assert {u["Name"]: u["Hard"] for u in hc["Ulimits"] or []}.get("nofile", 0) > 0
    # no host namespaces: not the host network, pid, ipc or uts namespace
    assert hc["NetworkMode"] in ("default", "bridge")
    assert hc["PidMode"] in ("", None) and hc["UTSMode"] in ("", None)
    assert hc["IpcMode"] == "private"
    # nothing of the host mounted or passed in
    assert not hc["Binds"] and not attrs["Mounts"] and not hc["Devices"]
    # the job port is published on 127.0.0.1 only (reachable through the tunnel)
    assert hc["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    bound = attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert [b["HostIp"] for b in bound] == ["127.0.0.1"] and int(bound[0]["HostPort"]) == info.host_port
    # a dead job is reported, not restarted behind the provider's back
    assert hc["RestartPolicy"]["Name"] in ("no", "")


async def test_low_port_gets_only_net_bind_service_and_default_rootfs_is_writable(container_runtime, docker_client):
    s = settings_from_config()
    _, attrs = await _inspect(container_runtime, docker_client, 22, 80, s)
    hc = attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and hc["CapAdd"] == ["NET_BIND_SERVICE"]
    assert hc["ReadonlyRootfs"] is False and not hc.get("Tmpfs")  # the config default
    assert hc["Privileged"] is False and "no-new-privileges" in hc["SecurityOpt"]


async def test_read_only_rootfs_is_enforced_inside(container_runtime, docker_client):
    """The kernel's view: writing / fails, writing /tmp works."""
    import trio

    s = settings_from_config(read_only_rootfs=True, tmpfs_mb=4)
    script = "touch /x 2>/dev/null && echo ROOT-WRITABLE || echo ROOT-RO; touch /tmp/y && echo TMP-OK; sleep 30"
    await _inspect(container_runtime, docker_client, 23, 8080, s, command=("sh", "-c", script))
    out = b""
    with trio.fail_after(15):
        async with container_runtime.logs(23, follow=True) as chunks:
            async for chunk in chunks:
                out += chunk
                if b"TMP-OK" in out:
                    break
    assert b"ROOT-RO" in out and b"ROOT-WRITABLE" not in out and b"TMP-OK" in out, out
