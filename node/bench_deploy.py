"""`kaisar bench deploy`: time from the purchase transaction to the first byte through the
tunnel, next to the floor measured in the same run.

Deploy time (per job, jobs one after another on one devnet ``open_stack``: embedded
chain, 4 checkers, 3 providers on the private Docker Engine): the clock starts when the
light client calls ``buy`` (ad check + purchase transaction) and stops at the first byte
of the HTTP answer read from the client's local ``connect`` port, i.e. through checker
quorum, on-chain assignment, deploy command, container start, ``wait_deployed``
verification and a libp2p tunnel. Each job is closed afterwards (its slot frees).

With ``--net procs`` the network is instead one OS process per node, as operators run
``kaisar node`` (``node.procnet``: an anvil chain process, 4 checker and 3 provider
processes with the devnet's timers). Then only the client's steps are marked (the
nodes' marks are in other processes), and ``cpu_s`` is the CPU time of the node
processes and this one together.

Floor: the same image started with a plain ``docker run`` (docker SDK, published port on
127.0.0.1) and a direct TCP connection to that port, polled until the first byte of an
HTTP answer: what any deployment of this container costs on this machine.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from node import trace
from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT

READY_TIMEOUT = 120.0
DEPLOY_TIMEOUT = 60.0
FLOOR_TIMEOUT = 30.0
LABEL_BENCH = "kaisar.bench"
# The marks of one job in the order the work flows (node.trace.mark call sites, plus
# the assignment engine's own proposal / QC times and the bench's listener and first
# byte). steps_ms gives each one's distance from the previous mark that happened.
STEP_ORDER = (
    "purchase_mined",  # buy: fresh-ad check + Escrow.createJob mined (client)
    "checker_saw_job",  # first checker's event watcher delivers JobCreated
    "proposed",  # the round's leader signs its proposal (engine)
    "qc_formed",  # first checker holding a 2/3 AssignQC (engine)
    "assign_tx_sent",  # leader starts Escrow.assign
    "assign_tx_mined",
    "deploy_sent",  # leader opens /kaisar/deploy/1 with the QC
    "provider_got_deploy",
    "provider_checked",  # job + checker set read from chain, QC verified
    "container_create",  # image present, no old container for the job
    "container_created",
    "container_started",
    "container_ready",  # survived the startup grace, port published
    "status_published",  # signed JobStatus "deployed" gossiped
    "deploy_replied",  # leader has the "deployed" reply
    "client_saw_assigned",  # wait: JOB_ASSIGNED read from chain
    "client_got_status",  # wait: provider's signed status + QC over /kaisar/status/1
    "client_verified",  # wait: QC against the chain's checker set, status signature
    "listening",  # connect: local port bound
    "first_byte",  # first answer byte through the tunnel
)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(0.95 * len(s) + 0.5) - 1))]


def _first_byte_direct(port: int, deadline: float) -> float:
    """Poll 127.0.0.1:port with an HTTP request until a byte of the answer arrives."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
                if sock.recv(1):
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no answer on port {port} within {FLOOR_TIMEOUT} s")


def floor_once(client: Any) -> float:
    """Seconds from `docker run` to the first byte over a direct TCP connection."""
    name = f"kaisar-bench-{uuid.uuid4().hex[:10]}"
    t0 = time.monotonic()
    c = client.containers.run(
        DEMO_HTTP_IMAGE, name=name, detach=True, labels={LABEL_BENCH: "floor"},
        ports={f"{DEMO_HTTP_PORT}/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    try:
        c.reload()
        port = int(c.attrs["NetworkSettings"]["Ports"][f"{DEMO_HTTP_PORT}/tcp"][0]["HostPort"])
        return _first_byte_direct(port, t0 + FLOOR_TIMEOUT) - t0
    finally:
        c.remove(force=True)


def measure_floor(docker_host: str, n: int) -> list[float]:
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=30)
    try:
        return [floor_once(client) for _ in range(n)]
    finally:
        client.close()


async def first_byte_through(port: int, job: int) -> tuple[float, bytes]:
    """Send a request to the local tunnel port; the time the first answer byte arrives."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET /cgi-bin/echo?job={job} HTTP/1.0\r\nHost: b\r\n\r\n".encode())
        first = await stream.receive_some(65536)
        t = time.monotonic()
        rest = [first]
        while chunk := await stream.receive_some(65536):
            rest.append(chunk)
    return t, b"".join(rest)


def engine_marks(s: Any, job: int) -> dict[str, float]:
    """The assignment engines' proposal and QC times of ``job`` (monotonic seconds);
    none when the checkers are other processes (``s`` is None)."""
    if s is None:
        return {}
    offset = time.monotonic() - trio.current_time()
    out: dict[str, float] = {}
    for c in s.checker_services:
        for step, seen in (("proposed", c.engine.proposed_at), ("qc_formed", c.engine.decided_at)):
            if job in seen:
                t = seen[job] + offset
                out[step] = min(out.get(step, t), t)
    return out


def step_breakdown(t0: float, marks: dict[str, float]) -> tuple[dict[str, int], dict[str, int]]:
    """(ms since t0 per mark, ms since the previous mark per step), in time order."""
    at = {k: round((v - t0) * 1000) for k, v in marks.items() if k in STEP_ORDER}
    order = sorted(at, key=lambda k: (at[k], STEP_ORDER.index(k)))
    steps, prev = {}, 0
    for k in order:
        steps[k] = at[k] - prev
        prev = at[k]
    return {k: at[k] for k in order}, steps


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of ``pids`` (those still running)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def deploy_once(
    s: Any, client: Any, emit: Any, rec: trace.Recorder, pids: list[int] | None = None
) -> dict[str, Any]:
    pids = pids or []
    cpu0 = cpu_seconds(pids)
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0)
    marks["purchased"] = time.monotonic() - t0

    def progress(line: str) -> None:
        if line.startswith("assigned"):
            marks.setdefault("assigned", time.monotonic() - t0)

    dep = await client.wait_deployed(job, timeout=DEPLOY_TIMEOUT, progress=progress)
    status_from = client.last_status_source
    marks["deployed_verified"] = time.monotonic() - t0
    async with trio.open_nursery() as n:
        port = await n.start(client.connect, job, 0)
        trace.mark("listening", job)
        with trio.fail_after(30):
            t_first, answer = await first_byte_through(port, job)
        n.cancel_scope.cancel()
    cpu = cpu_seconds(pids) - cpu0  # the whole devnet's CPU (all threads, node processes)
    ok = f"job={job}".encode() in answer
    if not ok:
        raise RuntimeError(f"job {job}: wrong answer through the tunnel: {answer[:200]!r}")
    await client.close(job)
    at_ms, steps_ms = step_breakdown(
        t0, {**rec.of(job), **engine_marks(s, job), "first_byte": t_first}
    )
    run = {
        "job": job,
        "provider": dep.provider,
        "total_s": round(t_first - t0, 3),
        "cpu_s": round(cpu, 3),
        "status_from": status_from,  # push | gossip | query (how wait learned the status)
        **{f"{k}_s": round(v, 3) for k, v in marks.items()},
        "at_ms": at_ms,
        "steps_ms": steps_ms,
    }
    emit(run)
    return run


async def run_bench(
    jobs: int = 5, emit: Any = lambda run: None, chain: str = "embedded", net: str = "process"
) -> dict[str, Any]:
    from node.roles.provider.engine import ensure_engine

    docker_host = await trio.to_thread.run_sync(ensure_engine)
    floors = await trio.to_thread.run_sync(measure_floor, docker_host, jobs)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kaisar-bench-deploy-") as tmp:
        if net == "procs":
            await _deploy_runs_procs(Path(tmp), jobs, emit, runs, docker_host)
        else:
            await _deploy_runs(Path(tmp), jobs, emit, runs, chain)
    totals = [r["total_s"] for r in runs]
    med, floor_med = statistics.median(totals), statistics.median(floors)
    names = [k for k in STEP_ORDER if any(k in r["steps_ms"] for r in runs)]
    steps_median = {
        k: round(statistics.median(r["steps_ms"][k] for r in runs if k in r["steps_ms"]))
        for k in names
    }
    return {
        "jobs": jobs,
        "net": net,
        "chain": "anvil" if net == "procs" else chain,
        "median_s": round(med, 3),
        "p95_s": round(p95(totals), 3),
        "floor_median_s": round(floor_med, 3),
        "ratio": round(med / floor_med, 2) if floor_med > 0 else None,
        "cpu_median_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "floor_runs_s": [round(f, 3) for f in floors],
        "steps_median_ms": steps_median,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }


async def _deploy_runs(
    workdir: Path, jobs: int, emit: Any, runs: list[dict[str, Any]], chain: str
) -> None:
    from node.client.api import Client
    from node.devnet_stack import open_stack

    async with open_stack(workdir=workdir, explorer=False, chain=chain) as s:
        assert s.user is not None
        client = Client(s.user, s.user_host, s.chain, ad_wait=15.0, poll_interval=0.2)
        await client.start()
        # every checker holds a PoPW certificate for some provider (not all of them make
        # it in the first epoch on a loaded 2-core machine; jobs run one at a time)
        with trio.fail_after(READY_TIMEOUT):
            while min(len(c.standing) for c in s.checker_services) < 1:
                await trio.sleep(0.2)
        with trace.recording() as rec:
            for _ in range(jobs):
                runs.append(await deploy_once(s, client, emit, rec))


async def _deploy_runs_procs(
    workdir: Path, jobs: int, emit: Any, runs: list[dict[str, Any]], docker_host: str
) -> None:
    from node.procnet import open_procnet

    async with open_procnet(
        workdir, checkers=4, providers=3, docker_host=docker_host, network="bench"
    ) as net:
        await net.wait_standing(len(net.providers), timeout=READY_TIMEOUT)
        pids = [n.proc.pid for n in net.nodes if n.proc is not None]
        async with net.client(ad_wait=15.0, poll_interval=0.2) as client:
            with trace.recording() as rec:
                for _ in range(jobs):
                    runs.append(await deploy_once(None, client, emit, rec, pids))
