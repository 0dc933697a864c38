"""Job containers on a Docker Engine: start them under one security policy, find them
again after a restart, stop them, and leave nothing behind.

Resource rules:
- Everything this runtime creates carries the labels `kaisar.node=<node address>` and
  `kaisar.job=<job id>`; it only ever touches containers with its own node label, so
  several providers (devnet, tests) can share one engine.
- One container per job (deterministic name). `start` returns only a *running*
  container whose port is published on 127.0.0.1; on any failure the container it
  created is removed before the error is raised.
- `adopt_or_cleanup` (at provider start) keeps running containers of live jobs and
  removes everything else it owns; `cleanup_all` removes everything it owns.

Error rule: every failure is a `ContainerError` whose `reason` says which kind
(engine unreachable, image missing, start failed, not found, invalid request, other
engine error) and whose message says what to do next.

The docker SDK is synchronous: each call runs in `trio.to_thread.run_sync`. Calls that
change a job's container are serialized per job.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
import trio
from docker.models.containers import _create_container_args  # docker>=7,<8 (pyproject)
from docker.types import DeviceRequest, LogConfig, Ulimit

from node import trace
from node.roles.provider.images import ImageUnavailable, ensure_image, is_valid_image_ref

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_NODE = "kaisar.node"
LABEL_JOB = "kaisar.job"
LABEL_PORT = "kaisar.port"
LABEL_GPUS = "kaisar.gpus"
PUBLISH_IP = "127.0.0.1"  # job ports are reachable only through the provider's tunnel
API_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10  # SIGTERM, then SIGKILL after this long
STARTUP_GRACE_S = 0.3  # a container that exits this soon after start failed to start
STARTUP_POLL_S = 0.05  # re-inspect the container this often while it starts
PROBE_POLL_S = 0.01  # ...and probe its port this often in between
PROBE_TIMEOUT_S = 0.05  # connect to the container's own address (a local bridge)
LOG_TAIL_ON_FAILURE = 5
# Below the sandbox hard limit of 20000 (dockerd cannot grant more than it has).
NOFILE_LIMIT = 16384
LOG_CONFIG = {"max-size": "10m", "max-file": "3"}  # job logs cannot fill the disk
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # docker's own minimum
MAX_LOG_STREAMS = 64  # follow streams block a thread each; keep them off trio's default pool

_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_-]{0,127}$")
_NAME_UNSAFE_RE = re.compile(r"[^a-zA-Z0-9_.-]")


class Reason(StrEnum):
    ENGINE_UNREACHABLE = "engine-unreachable"
    IMAGE_MISSING = "image-missing"
    START_FAILED = "start-failed"
    NOT_FOUND = "not-found"
    INVALID = "invalid"
    ENGINE_ERROR = "engine-error"


class ContainerError(Exception):
    """The one error of the container runtime: `reason` (a Reason) plus a clear message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 1024 * 1024 * 1024
    cpus: float = 1.0
    pids: int = 512
    read_only: bool = False  # read-only rootfs; /tmp is then a tmpfs of tmpfs_bytes
    tmpfs_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ContainerInfo:
    job_id: int
    container_id: str
    name: str
    image: str
    state: str  # docker's State.Status: created, running, exited, dead, ...
    container_port: int
    host_ip: str
    host_port: int | None  # None when not running (docker unpublishes on stop)
    gpus: tuple[str, ...]
    exit_code: int | None = None
    error: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Removed:
    job_id: int | None
    container_id: str
    reason: str


@dataclass
class AdoptResult:
    adopted: dict[int, ContainerInfo] = field(default_factory=dict)
    removed: list[Removed] = field(default_factory=list)
    missing: set[int] = field(default_factory=set)  # live jobs without a running container


def container_name(node: str, job_id: int) -> str:
    """Deterministic, engine-wide unique name: a second create for the job conflicts."""
    return f"kaisar-{_NAME_UNSAFE_RE.sub('-', node)}-job-{job_id}"


def validate_request(
    job_id: int, image: str, port: int, gpus: Iterable[str], limits: Limits, env: dict[str, str]
) -> None:
    """Raise ContainerError(INVALID) unless the start request is well formed."""
    checks = [
        # Job ids are chain ids: non-negative integers
        (isinstance(job_id, int) and not isinstance(job_id, bool) and job_id >= 0, "job id"),
        # An image reference, not a flag or a shell word
        (is_valid_image_ref(image), f"image reference {image!r}"),
        # A TCP port the container listens on
        (isinstance(port, int) and 1 <= port <= 65535, f"port {port!r}"),
        # GPU UUIDs (GPU-...) or indices only
        (all(isinstance(g, str) and _GPU_ID_RE.fullmatch(g) for g in gpus), f"gpus {list(gpus)!r}"),
        # Limits docker accepts
        (limits.memory_bytes >= MIN_MEMORY_BYTES, f"memory {limits.memory_bytes}"),
        (limits.cpus > 0, f"cpus {limits.cpus}"),
        (limits.pids >= 1, f"pids {limits.pids}"),
        # Environment variable names
        (all(isinstance(k, str) and _ENV_KEY_RE.fullmatch(k) for k in env), "env keys"),
        (all(isinstance(v, str) and "\0" not in v for v in env.values()), "env values"),
    ]
    for ok, what in checks:
        if not ok:
            raise ContainerError(Reason.INVALID, f"invalid {what} for job {job_id!r}")


def container_spec(
    node: str,
    job_id: int,
    image: str,
    port: int,
    gpus: Iterable[str],
    limits: Limits,
    env: dict[str, str],
    command: list[str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `client.containers.create` for a job: the security policy."""
    gpus = tuple(gpus)
    spec: dict[str, Any] = {
        "image": image,
        "command": command,
        "name": container_name(node, job_id),
        "hostname": f"job-{job_id}",
        "labels": {
            LABEL_NODE: node,
            LABEL_JOB: str(job_id),
            LABEL_PORT: str(port),
            LABEL_GPUS: ",".join(gpus),
        },
        "environment": {**env, "KAISAR_JOB_ID": str(job_id)},
        # Only 127.0.0.1, host port chosen by docker: reachable only via the tunnel.
        "ports": {f"{port}/tcp": (PUBLISH_IP, None)},
        "privileged": False,
        "cap_drop": ["ALL"],
        # Root in the container may still bind a low port; nothing else is given back.
        "cap_add": ["NET_BIND_SERVICE"] if port < 1024 else [],
        "security_opt": ["no-new-privileges"],
        "init": True,  # reaps zombies, forwards SIGTERM to the job's process
        "ipc_mode": "private",
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,  # no swap beyond the memory limit
        "nano_cpus": int(limits.cpus * 1_000_000_000),
        "pids_limit": limits.pids,
        "ulimits": [Ulimit(name="nofile", soft=NOFILE_LIMIT, hard=NOFILE_LIMIT)],
        "read_only": limits.read_only,
        "log_config": LogConfig(type=LogConfig.types.JSON, config=dict(LOG_CONFIG)),
        "restart_policy": {"Name": "no"},  # a dead job is reported, not silently restarted
    }
    if limits.read_only:
        spec["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_bytes}"}
    if gpus:
        spec["device_requests"] = [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]
    return spec


def info_from_attrs(attrs: dict[str, Any]) -> ContainerInfo:
    """ContainerInfo from `docker inspect` data of a container this runtime labelled."""
    labels = attrs.get("Config", {}).get("Labels") or {}
    state = attrs.get("State") or {}
    status = state.get("Status", "unknown")
    port = int(labels.get(LABEL_PORT) or 0)
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    host_port = next((int(b["HostPort"]) for b in bindings if b.get("HostIp") == PUBLISH_IP), None)
    gpus = tuple(g for g in (labels.get(LABEL_GPUS) or "").split(",") if g)
    return ContainerInfo(
        job_id=int(labels[LABEL_JOB]),
        container_id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        image=attrs.get("Config", {}).get("Image", ""),
        state=status,
        container_port=port,
        host_ip=PUBLISH_IP,
        host_port=host_port,
        gpus=gpus,
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        error=state.get("Error") or "",
    )


def container_addr(attrs: dict[str, Any]) -> str | None:
    """The container's own IP on its (first) network, if it has one."""
    ns = attrs.get("NetworkSettings") or {}
    for net in (ns.get("Networks") or {}).values():
        if net and net.get("IPAddress"):
            return str(net["IPAddress"])
    return ns.get("IPAddress") or None


def probe_port(ip: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool | None:
    """Does the container's service accept TCP on ip:port? True, False (refused: not yet
    listening), or None (the address is not reachable from here: cannot tell)."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None


def _explain(e: BaseException) -> str:
    text = getattr(e, "explanation", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:500]


class ContainerRuntime:
    """The provider's containers on one Docker Engine (see the module docstring)."""

    def __init__(
        self,
        node: str,
        *,
        docker_host: str | None = None,
        client: docker.DockerClient | None = None,
        allow_pull: bool = True,
        stop_timeout: float = STOP_TIMEOUT_S,
        startup_grace: float = STARTUP_GRACE_S,
    ) -> None:
        if not node:
            raise ContainerError(Reason.INVALID, "node address must not be empty")
        self.node = node
        self.allow_pull = allow_pull
        self.stop_timeout = stop_timeout
        self.startup_grace = startup_grace
        self._docker_host = docker_host
        self._client = client
        self._client_lock = threading.Lock()  # first use may come from several threads
        self._job_locks: dict[int, trio.Lock] = {}
        self._log_limiter = trio.CapacityLimiter(MAX_LOG_STREAMS)

    # -- plumbing ---------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            return self._client or self._connect()

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self._docker_host:
                    self._client = docker.DockerClient(
                        base_url=self._docker_host, timeout=API_TIMEOUT_S
                    )
                else:
                    self._client = docker.from_env(timeout=API_TIMEOUT_S)
            except docker.errors.DockerException as e:
                where = self._docker_host or "DOCKER_HOST / default socket"
                raise ContainerError(
                    Reason.ENGINE_UNREACHABLE,
                    f"no Docker Engine answers at {where}: {_explain(e)}; "
                    "start one with `eval $(scripts/dockerd.sh)`",
                ) from e
        return self._client

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a sync SDK call, turning SDK/transport errors into ContainerError."""
        try:
            return fn(*args)
        except ContainerError:
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise ContainerError(
                Reason.ENGINE_UNREACHABLE, f"Docker Engine connection failed: {_explain(e)}"
            ) from e
        except docker.errors.DockerException as e:
            raise ContainerError(Reason.ENGINE_ERROR, _explain(e)) from e

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Shielded: a cancelled caller must not leave the engine half-way through a
        # change it cannot see; the call completes, then the cancellation is delivered.
        with trio.CancelScope(shield=True):
            return await trio.to_thread.run_sync(functools.partial(self._guard, fn, *args))

    async def _locked(self, job_id: int, fn: Callable[..., T], *args: Any) -> T:
        lock = self._job_locks.setdefault(job_id, trio.Lock())
        try:
            async with lock:
                return await self._run(fn, *args)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._job_locks.pop(job_id, None)

    def _find(self, job_id: int | None = None) -> list[Any]:
        """This node's containers (of one job if given), newest first, fully inspected."""
        labels = [f"{LABEL_NODE}={self.node}"]
        if job_id is not None:
            labels.append(f"{LABEL_JOB}={job_id}")
        found = self._docker().containers.list(
            all=True, filters={"label": labels}, ignore_removed=True
        )
        return sorted(found, key=lambda c: c.attrs.get("Created", ""), reverse=True)

    def _force_remove(self, container: Any) -> None:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass

    # -- sync bodies (run in a worker thread) ------------------------------------

    def _ping_sync(self) -> None:
        self._docker().ping()

    def _start_sync(
        self,
        job_id: int,
        image: str,
        port: int,
        gpus: tuple[str, ...],
        limits: Limits,
        env: dict[str, str],
        command: list[str] | None,
    ) -> ContainerInfo:
        client = self._docker()
        spec = container_spec(self.node, job_id, image, port, gpus, limits, env, command)
        trace.mark("container_create", job_id)
        # Create first, look only when needed: the name is the job's, so an existing
        # container of the job makes create fail with 409, and a missing image with
        # 404 (then pulled if allowed). Saves the list and image round trips before
        # every start.
        container = self._create(client, spec, job_id, image)
        if container is None:  # the job has a container already
            for existing in self._find(job_id):
                info = info_from_attrs(existing.attrs)
                if info.running and info.image == image and info.host_port is not None:
                    log.info(
                        "event=container_reused job=%s container=%s",
                        job_id,
                        info.container_id[:12],
                    )
                    return info
                log.info("event=container_replaced job=%s state=%s", job_id, info.state)
                self._force_remove(existing)
            container = self._create(client, spec, job_id, image)
            if container is None:
                raise ContainerError(
                    Reason.START_FAILED,
                    f"job {job_id}: create failed: name {spec['name']} is taken by a "
                    "container that is not this node's",
                )
        try:
            return self._start_created(container, job_id, port, gpus)
        except BaseException:
            # Docker leaves a failed start "Created" (GPU request, bad command, ...).
            self._force_remove(container)
            raise

    def _create(self, client: Any, spec: dict[str, Any], job_id: int, image: str) -> Any:
        """``docker create`` of ``spec``: the container (id only; ``reload`` fills it in),
        or None if its name is taken (409). A missing image is pulled once (if allowed)."""
        for attempt in range(2):
            try:
                # containers.create would inspect the new container at once; start's
                # reload does that anyway (docker-py 7's own argument conversion)
                args = _create_container_args({**spec, "version": client.api._version})
                created = client.api.create_container(**args)
                return client.containers.prepare_model({"Id": created["Id"]})
            except docker.errors.ImageNotFound as e:
                if attempt:
                    raise ContainerError(
                        Reason.START_FAILED, f"job {job_id}: create failed: {_explain(e)}"
                    ) from e
                try:
                    ensure_image(client, image, allow_pull=self.allow_pull)
                except ImageUnavailable as missing:
                    raise ContainerError(Reason.IMAGE_MISSING, str(missing)) from missing
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    return None
                raise ContainerError(
                    Reason.START_FAILED, f"job {job_id}: create failed: {_explain(e)}"
                ) from e
        raise AssertionError("unreachable")

    def _start_created(
        self, container: Any, job_id: int, port: int, gpus: tuple[str, ...]
    ) -> ContainerInfo:
        trace.mark("container_created", job_id)
        try:
            container.start()
        except docker.errors.APIError as e:
            why = _explain(e)
            if gpus and "device driver" in why:
                why = f"GPU request {list(gpus)} failed, no GPU runtime on this engine ({why})"
            raise ContainerError(Reason.START_FAILED, f"job {job_id}: {why}") from e
        trace.mark("container_started", job_id)
        # Running for startup_grace without exiting, or (sooner) running with the
        # service answering on its port: probed at the container's own address, since
        # docker-proxy accepts on the published port before anything listens behind it.
        deadline = time.monotonic() + self.startup_grace
        probing, answered = True, False
        while True:
            container.reload()
            info = info_from_attrs(container.attrs)
            if not info.running:
                tail = container.logs(tail=LOG_TAIL_ON_FAILURE).decode(errors="replace")
                last = " | ".join(line for line in tail.splitlines() if line.strip())
                raise ContainerError(
                    Reason.START_FAILED,
                    f"job {job_id}: container {info.state} right after start "
                    f"(exit code {info.exit_code}): {last or info.error or 'no output'}",
                )
            if answered or time.monotonic() >= deadline:
                break
            ip = container_addr(container.attrs)
            next_check = min(time.monotonic() + STARTUP_POLL_S, deadline)
            while probing and ip and not answered and time.monotonic() < next_check:
                got = probe_port(ip, port)
                probing, answered = got is not None, bool(got)  # None: cannot tell
                if not answered:
                    time.sleep(PROBE_POLL_S)
            time.sleep(max(0.0, next_check - time.monotonic()) if not answered else 0)
        ports = container.attrs["NetworkSettings"]["Ports"] or {}
        foreign = [b for b in ports.get(f"{port}/tcp") or [] if b.get("HostIp") != PUBLISH_IP]
        if info.host_port is None or foreign:
            raise ContainerError(
                Reason.START_FAILED,
                f"job {job_id}: port {port} is not published on {PUBLISH_IP} only "
                f"(got {ports!r}); does the engine have a bridge network? "
                "see docs/CONTAINERS.md",
            )
        trace.mark("container_ready", job_id)
        log.info(
            "event=container_started job=%s container=%s host_port=%s gpus=%s",
            job_id,
            info.container_id[:12],
            info.host_port,
            ",".join(gpus) or "-",
        )
        return info

    def _stop_sync(self, job_id: int, timeout: float) -> ContainerInfo | None:
        found = self._find(job_id)
        for c in found:
            if c.status in ("running", "restarting", "paused"):
                c.stop(timeout=math.ceil(timeout))  # the API takes whole seconds
            c.reload()
        if found:
            log.info("event=container_stopped job=%s", job_id)
            return info_from_attrs(found[0].attrs)
        return None

    def _remove_sync(self, job_id: int) -> bool:
        found = self._find(job_id)
        for c in found:
            self._force_remove(c)
        if found:
            log.info("event=container_removed job=%s count=%s", job_id, len(found))
        return bool(found)

    def _status_sync(self, job_id: int) -> ContainerInfo | None:
        found = self._find(job_id)
        return info_from_attrs(found[0].attrs) if found else None

    def _list_sync(self) -> list[ContainerInfo]:
        out = []
        for c in self._find():
            try:
                out.append(info_from_attrs(c.attrs))
            except (KeyError, ValueError):
                continue  # a broken label: not ours to report; adopt_or_cleanup removes it
        return out

    def _adopt_sync(self, active: frozenset[int]) -> AdoptResult:
        result = AdoptResult()
        for c in self._find():  # newest first: a job's newest running container wins
            try:
                info = info_from_attrs(c.attrs)
            except (KeyError, ValueError):
                reason = "bad job label"
                job_id = None
            else:
                job_id = info.job_id
                if job_id not in active:
                    reason = "job ended"
                elif not info.running:
                    reason = f"state {info.state}"
                elif info.host_port is None:
                    reason = "port not published on 127.0.0.1"
                elif job_id in result.adopted:
                    reason = "duplicate container for job"
                else:
                    result.adopted[job_id] = info
                    log.info("event=container_adopted job=%s container=%s", job_id, c.id[:12])
                    continue
            self._force_remove(c)
            result.removed.append(Removed(job_id, c.id, reason))
            log.info(
                "event=container_cleaned job=%s container=%s reason=%r", job_id, c.id[:12], reason
            )
        result.missing = set(active) - set(result.adopted)
        return result

    def _cleanup_sync(self) -> list[Removed]:
        removed = []
        for c in self._find():
            self._force_remove(c)
            job = c.labels.get(LABEL_JOB, "")
            removed.append(Removed(int(job) if job.isdigit() else None, c.id, "cleanup"))
        if removed:
            log.info("event=containers_cleaned node=%s count=%s", self.node, len(removed))
        return removed

    # -- public async API --------------------------------------------------------

    async def ping(self) -> None:
        """Raise ContainerError(ENGINE_UNREACHABLE) unless the engine answers."""
        await self._run(self._ping_sync)

    async def start(
        self,
        job_id: int,
        image: str,
        port: int,
        gpus: Iterable[str] = (),
        limits: Limits | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> ContainerInfo:
        """Run the job's container (idempotent: a running one for the job is returned).

        GPUs are requested by id (UUID or index) from the engine's GPU runtime. Returns
        only a container that is running and published on 127.0.0.1; on failure the
        created container is removed and ContainerError says why.
        """
        gpus, limits, env = tuple(gpus), limits or Limits(), dict(env or {})
        validate_request(job_id, image, port, gpus, limits, env)
        return await self._locked(
            job_id, self._start_sync, job_id, image, port, gpus, limits, env, command
        )

    async def stop(self, job_id: int, timeout: float | None = None) -> ContainerInfo | None:
        """Stop the job's container (SIGTERM, SIGKILL after `timeout` s); keep it for logs.

        Returns its final state, or None if the job has no container.
        """
        t = self.stop_timeout if timeout is None else timeout
        return await self._locked(job_id, self._stop_sync, job_id, t)

    async def remove(self, job_id: int) -> bool:
        """Remove the job's container(s), running or not. False if there was none."""
        return await self._locked(job_id, self._remove_sync, job_id)

    async def status(self, job_id: int) -> ContainerInfo | None:
        """The job's (newest) container, or None."""
        return await self._run(self._status_sync, job_id)

    async def list_managed(self) -> list[ContainerInfo]:
        """All containers of this node, newest first."""
        return await self._run(self._list_sync)

    async def adopt_or_cleanup(self, active_job_ids: Iterable[int]) -> AdoptResult:
        """At provider start: keep running containers of live jobs, remove all the rest.

        Removed: containers of jobs not in `active_job_ids`, not running (exited,
        created, dead, paused, ...), without their 127.0.0.1 port, duplicates, or with a
        broken job label. `missing` lists live jobs that have no container any more.
        """
        return await self._run(self._adopt_sync, frozenset(active_job_ids))

    async def cleanup_all(self) -> list[Removed]:
        """Remove every container of this node."""
        return await self._run(self._cleanup_sync)

    def logs(self, job_id: int, *, follow: bool = False, tail: int | str = "all") -> LogStream:
        """The job's stdout+stderr as an async iterator of bytes chunks.

        Use as `async with runtime.logs(job, follow=True) as chunks: async for c in chunks:`.
        With follow the stream ends when the container stops; cancelling the reader
        closes the connection to the engine.
        """
        return LogStream(self, job_id, follow=follow, tail=tail)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class LogStream:
    """Async iterator over a container's log chunks (see ContainerRuntime.logs)."""

    def __init__(self, runtime: ContainerRuntime, job_id: int, *, follow: bool, tail: int | str):
        self._rt = runtime
        self._job_id = job_id
        self._follow = follow
        self._tail = tail
        self._chunks: Iterator[bytes] | None = None
        self._closed = False

    def _open(self) -> Iterator[bytes]:
        found = self._rt._find(self._job_id)
        if not found:
            raise ContainerError(Reason.NOT_FOUND, f"job {self._job_id} has no container")
        container = found[0]
        if self._follow:
            return container.logs(stream=True, follow=True, tail=self._tail)
        data = container.logs(stream=False, tail=self._tail)
        return iter([data] if data else [])

    def _next(self) -> bytes | None:
        assert self._chunks is not None
        return next(self._chunks, None)

    def _guarded_next(self) -> bytes | None:
        return self._rt._guard(self._next)

    def _close_sync(self) -> None:
        self._closed = True
        close = getattr(self._chunks, "close", None)
        if close is not None:
            try:
                close()  # docker's CancellableStream: shuts the socket, unblocks _next
            except OSError:
                pass

    async def __aenter__(self) -> LogStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> LogStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if self._chunks is None:
            self._chunks = await self._rt._run(self._open)
        try:
            # mypy 2.x loses this keyword through trio's @enable_ki_protection typing.
            chunk = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                self._guarded_next,
                abandon_on_cancel=True,
                limiter=self._rt._log_limiter,
            )
        except BaseException:
            self._close_sync()
            raise
        if chunk is None:
            self._close_sync()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._close_sync()
