"""The provider role: ads, PoPW responder, certified deploys, status, logs, tunnels.

``ProviderService(host, settings, state_path, chain=..., runtime=...)`` owns one
node's jobs. ``await service.run(task_status=...)`` registers the stream handlers,
restores state (re-adopts running containers, cleans up the rest), then runs the ad
loop and the job monitor in one nursery until cancelled. Cancelling it leaves job
containers running: the next start on the same data_dir adopts them.

Capacity is counted in *slots*: the inventory's GPUs (UUIDs, at most ``max_gpus``),
or on a CPU-only machine ``max_gpus`` CPU slots that request no device. A job takes
``job.count`` slots from its deploy until it stops; ads report exactly the slots no
live job holds.

Busy policy (``busy_seconds``): a PoPW challenge is answered only while at least one
slot is free (the prover then runs on a free device); with every slot serving a job
the provider answers ``busy`` with ``retry_after`` = seconds until the first job ends
(at most one hour). One exchange at a time is enforced by the responder itself.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID

from node import metrics, trace
from node.chain.api import JOB_ASSIGNED, JOB_OPEN, KaisarChain
from node.consensus.checkers import CheckerSetError, make_checker_set
from node.consensus.votes import assign_digest
from node.eip712 import Domain
from node.identity import peer_id_to_address
from node.p2p.datapath import DataPathServer, listen_host
from node.p2p.frames import FramedStream, FrameError
from node.p2p.host import KaisarHost
from node.p2p.relay import RelayClient, RelaySettings
from node.popw.inventory import Inventory, read_inventory
from node.roles.provider import deploy as deploy_rules
from node.roles.provider import messages as msg
from node.roles.provider import tunnel
from node.roles.provider.deploy import DeployRefused, decode_deploy
from node.roles.provider.messages import AccessDenied
from node.roles.provider.runtime import ContainerError, ContainerRuntime, Limits
from node.roles.provider.state import JobRecord, ProviderState
from node.roles.provider.tunnel import TOKEN_MAX_BYTES, TOKEN_TIMEOUT

log = logging.getLogger("kaisar.provider")

POPW_PROTOCOL = "/kaisar/popw/1"
DEPLOY_PROTOCOL = deploy_rules.PROTOCOL_ID
TUNNEL_PROTOCOL = "/kaisar/tunnel/1"
LOGS_PROTOCOL = "/kaisar/logs/1"
STATUS_PROTOCOL = "/kaisar/status/1"
CLOSED_PROTOCOL = "/kaisar/closed/1"
LOG_FRAME_BYTES = 32 * 1024
MAX_BUSY_SECONDS = 3600.0
CHECKER_CACHE_S = 30.0  # how long the provider trusts its copy of the active checker set
NOTIFY_TIMEOUT = 5.0  # the push of a "deployed" status to the owner's peer
ACCEPTED_TIMEOUT = 5.0  # the "accepted" frame to the deploying checker
DEPLOY_STALL_S = 30.0  # "deploying" this long with no deploy under way: the monitor finishes it
STATE_FILE = "provider.sqlite"


@dataclass(frozen=True)
class ProviderSettings:
    gpu_class: str = "cpu"
    price_per_gpu_hour_wei: int = 10**15
    ad_interval: float = 10.0
    max_gpus: int = 1
    status_interval: float = 5.0  # job monitor period: expiry, container health, heartbeat
    chain_poll_interval: float = 10.0  # re-read live jobs on chain (closed, reassigned, extended)
    max_tunnels_per_job: int = 8
    max_log_streams_per_job: int = 4  # each one holds a connection to the engine
    limits: Limits = field(default_factory=Limits)
    log_retention: float = 600.0  # keep a stopped container this long for its logs
    relay: RelaySettings = field(default_factory=RelaySettings)  # reservations (off here)

    @classmethod
    def from_config(cls, p: Any) -> ProviderSettings:
        return cls(
            gpu_class=p.gpu_class,
            price_per_gpu_hour_wei=p.price_per_gpu_hour_wei,
            ad_interval=p.ad_interval,
            max_gpus=p.max_gpus,
            status_interval=p.status_interval,
            chain_poll_interval=p.chain_poll_interval,
            max_tunnels_per_job=p.max_tunnels_per_job,
            max_log_streams_per_job=p.max_log_streams_per_job,
            limits=Limits(
                memory_bytes=p.memory_mb * 1024 * 1024,
                cpus=p.cpus,
                pids=p.pids,
                read_only=p.read_only_rootfs,
                tmpfs_bytes=p.tmpfs_mb * 1024 * 1024,
            ),
            log_retention=p.log_retention,
            relay=RelaySettings(mode=p.relay, relays=tuple(p.relays), count=p.relay_count),
        )


def capacity_slots(inv: Inventory, max_gpus: int) -> tuple[list[str], bool]:
    """(slot ids, are they GPU devices): the inventory's GPUs, or CPU slots."""
    if inv.gpus:
        return [g.uuid or str(g.index) for g in inv.gpus][:max_gpus], True
    return [f"cpu{i}" for i in range(max_gpus)], False


def inventory_summary(inv: Inventory) -> dict[str, Any]:
    return {
        "gpus": [
            {"index": g.index, "name": g.name[:64], "uuid": g.uuid[:64], "memory_mb": g.memory_total_mb or 0}
            for g in inv.gpus
        ],
        "driver": (inv.driver_version or "")[:32],
        "cuda": (inv.cuda_version or "")[:16],
        "cpu": inv.cpu[:64],
        "cpu_count": inv.cpu_count,
    }


def seconds_left(job: Any, chain_time: int) -> float:
    """Paid time left: from the chain's clock once assigned, all of it while open."""
    if job.state == JOB_ASSIGNED:
        return float(job.started + job.remaining - chain_time)
    return float(job.remaining)


class ProviderService:
    def __init__(
        self,
        host: KaisarHost,
        settings: ProviderSettings,
        state_path: Path,
        *,
        chain: KaisarChain | None = None,
        runtime: ContainerRuntime | None = None,
        inventory: Inventory | None = None,
        prover: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.settings = settings
        self.state = ProviderState(state_path)
        self.chain = chain
        self.runtime = runtime
        self.inventory = inventory
        self.prover = prover
        self.clock = clock
        self.slots: list[str] = []
        self.gpu_devices = False
        self.engine_ok = False
        self._job_locks: dict[int, trio.Lock] = defaultdict(trio.Lock)
        self._tunnels: dict[int, int] = defaultdict(int)
        self._log_streams: dict[int, int] = defaultdict(int)
        self._tunnel_scopes: dict[int, set[trio.CancelScope]] = defaultdict(set)
        self.data_path = DataPathServer(host=listen_host(host.options.listen))
        self._ended_at: dict[int, float] = {}
        self._changed = trio.Event()
        self._checkers: set[str] = set()
        self._checkers_at = -CHECKER_CACHE_S - 1.0
        self._last_chain_poll = 0.0
        self._nursery: trio.Nursery | None = None
        self.ads_sent = 0
        self.owner_notified = 0  # "deployed" statuses pushed to an owner's peer
        self.relay: RelayClient | None = None
        if settings.relay.mode != "off":  # NAT: reachable through checkers' relays
            self.relay = RelayClient(host, settings.relay, on_change=self.changed)

    # properties -----------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def peer(self) -> str:
        return self.host.peer_id.to_base58()

    @property
    def domain(self) -> Domain:
        """Domain of QCs and owner tokens: the chain's (Staking is the verifying contract)."""
        return self.chain.domain if self.chain is not None else self.host.domain

    @property
    def accepting(self) -> bool:
        return self.engine_ok and self.chain is not None

    def held_slots(self) -> set[str]:
        return {g for r in self.state.jobs(live_only=True) for g in r.gpus}

    def free_slots(self) -> list[str]:
        held = self.held_slots()
        return [s for s in self.slots if s not in held] if self.accepting else []

    def changed(self) -> None:
        """Capacity or a job changed: send an ad now."""
        metrics.CONTAINERS.labels(metrics.label(self.address)).set(
            len(self.state.jobs(live_only=True))
        )
        self._changed.set()

    # lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.inventory is None:
            self.inventory = await trio.to_thread.run_sync(read_inventory)
        self.slots, self.gpu_devices = capacity_slots(self.inventory, self.settings.max_gpus)
        if self.prover is None:
            from node.popw.backends import best_backend
            from node.popw.prover import Prover

            self.prover = Prover(best_backend())
        await self._check_engine()
        await self.restore()
        self.host.set_handler(POPW_PROTOCOL, self._on_popw)
        self.host.set_handler(DEPLOY_PROTOCOL, self._on_deploy)
        self.host.set_handler(TUNNEL_PROTOCOL, self._on_tunnel)
        self.host.set_handler(LOGS_PROTOCOL, self._on_logs)
        self.host.set_handler(STATUS_PROTOCOL, self._on_status)
        self.host.set_handler(CLOSED_PROTOCOL, self._on_closed)
        log.info(
            "event=provider_started address=%s slots=%d gpu=%s accepting=%s",
            self.address, len(self.slots), self.gpu_devices, self.accepting,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.relay is not None:
                    await nursery.start(self.relay.run)
                nursery.start_soon(self._ad_loop)
                nursery.start_soon(self._monitor_loop)
                nursery.start_soon(self.data_path.run)
                task_status.started(self)
        finally:
            self._nursery = None
            self.state.close()

    async def _check_engine(self) -> None:
        if self.runtime is None:
            log.warning("event=no_container_runtime deploys=refused")
            return
        try:
            await self.runtime.ping()
            self.engine_ok = True
        except ContainerError as exc:
            log.warning("event=engine_unreachable err=%s deploys=refused", exc)

    async def restore(self) -> None:
        """After a restart: adopt running containers of live jobs, end or clean the rest."""
        now = self.clock()
        live = self.state.jobs(live_only=True)
        if not self.engine_ok or self.runtime is None:
            for r in live:
                self.state.update_job(r.job_id, state=msg.FAILED, reason="no container engine at restart")
            return
        keep = [r.job_id for r in live if r.expires > now]
        result = await self.runtime.adopt_or_cleanup(keep)
        for r in live:
            info = result.adopted.get(r.job_id)
            if info is not None:
                self.state.update_job(
                    r.job_id, state=msg.RUNNING, container_id=info.container_id, host_port=info.host_port
                )
                log.info("event=job_adopted job=%d container=%s", r.job_id, info.container_id[:12])
            elif r.expires <= now:
                self.state.update_job(r.job_id, state=msg.STOPPED, reason="expired")
            else:
                self.state.update_job(
                    r.job_id, state=msg.FAILED, reason="container lost while the provider was down"
                )
                log.warning("event=job_lost job=%d", r.job_id)
        for removed in result.removed:
            log.info("event=container_removed job=%s reason=%s", removed.job_id, removed.reason)

    # ads ----------------------------------------------------------------------------

    def ad_fields(self) -> dict[str, Any]:
        assert self.inventory is not None
        return {
            "peer": self.peer,
            "addrs": self.ad_addrs(),
            "gpu_class": self.settings.gpu_class,
            "price_per_gpu_hour_wei": self.settings.price_per_gpu_hour_wei,
            "gpus_total": len(self.slots),
            "gpus_free": len(self.free_slots()),
            "accepting": self.accepting,
            "inventory": inventory_summary(self.inventory),
        }

    def ad_addrs(self) -> list[str]:
        """Direct addresses, then the relay addresses of the reservations held now."""
        relayed = self.relay.circuit_addrs()[: msg.MAX_ADDRS // 2] if self.relay else []
        return self.host.addrs()[: msg.MAX_ADDRS - len(relayed)] + relayed

    async def publish_ad(self) -> None:
        ttl_ms = int(min(max(self.settings.ad_interval * 3, 5.0), 3600.0) * 1000)
        env = self.host.sign("ProviderAd", self.ad_fields(), ttl_ms=ttl_ms)
        try:
            await self.host.publish(msg.AD_TOPIC, env)
            self.ads_sent += 1
        except Exception as exc:  # no peers yet: the next period tries again
            log.debug("event=ad_publish_failed err=%s", exc)

    async def _ad_loop(self) -> None:
        while True:
            self._changed = trio.Event()
            await self.publish_ad()
            with trio.move_on_after(self.settings.ad_interval):
                await self._changed.wait()
                await trio.sleep(0.05)  # coalesce a burst of changes into one ad

    # PoPW ------------------------------------------------------------------------------

    def busy_seconds(self, challenge: Any = None) -> float | None:
        """The busy policy: None (answer) while a slot is free, else seconds to retry."""
        if not self.slots or len(self.held_slots()) < len(self.slots):
            return None
        ends = [r.expires for r in self.state.jobs(live_only=True)]
        wait = min(ends) - self.clock() if ends else MAX_BUSY_SECONDS
        return min(max(wait, 1.0), MAX_BUSY_SECONDS)

    async def _on_popw(self, framed: FramedStream, peer: ID) -> None:
        from node.popw.challenge import PopwError
        from node.popw.protocol import respond_popw

        if not await self._is_checker(peer):
            # Only the chain's active checkers may make this node compute: anyone else
            # could use it as a free prover for its own PoPW (a relay) or just burn it.
            log.info("event=popw_refused peer=%s reason=not an active checker", peer)
            return
        try:
            await respond_popw(framed, self.prover, busy=self.busy_seconds)
        except PopwError as exc:
            log.info("event=popw_refused peer=%s reason=%s", peer, exc)

    async def _is_checker(self, peer: Any) -> bool:
        """Is ``peer`` an active checker on chain? True without a chain (tests, sims).
        The set is cached for CHECKER_CACHE_S; an RPC failure keeps the last one."""
        if self.chain is None:
            return True
        now = self.clock()
        if now - self._checkers_at > CHECKER_CACHE_S:
            try:
                active = await self.chain.active_checkers()
                self._checkers = {k.lower() for k in active.node_keys}
                self._checkers_at = now
            except Exception as exc:  # RPC outage: the cached set (maybe empty) decides
                log.warning("event=checker_set_read_failed err=%s", exc)
        try:
            return peer_id_to_address(peer).lower() in self._checkers
        except Exception:  # not a secp256k1 peer id: not a checker's node key
            return False

    # deploy ------------------------------------------------------------------------------

    async def _on_deploy(self, framed: FramedStream, peer: ID) -> None:
        obj = await framed.recv(max_size=deploy_rules.MAX_REQUEST_BYTES, timeout=10.0)

        async def accepted(job_id: int) -> None:
            # The checks passed and the container starts now: the checker submits its
            # Escrow.assign on this frame rather than while we read the chain (on one
            # in-process chain the two held each other up). Best effort.
            try:
                await framed.send({"t": "accepted", "job_id": job_id}, timeout=ACCEPTED_TIMEOUT)
            except Exception as exc:
                log.info("event=deploy_accepted_not_sent job=%d err=%s", job_id, exc)

        reply = await self.deploy(obj, peer, accepted=accepted)
        await framed.send(reply)

    async def deploy(
        self,
        obj: Any,
        peer: Any = None,
        *,
        accepted: Callable[[int], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Handle one deploy frame; returns the reply frame (never raises for bad input).
        ``accepted(job_id)`` is awaited once the checks passed, before the container
        starts (not for a deployment that already runs)."""
        job_id = obj.get("job_id") if isinstance(obj, dict) else None
        try:
            req = decode_deploy(obj)
            trace.mark("provider_got_deploy", req.job_id)
            async with self._job_locks[req.job_id]:
                return await self._deploy(req, accepted)
        except DeployRefused as exc:
            log.info("event=deploy_refused job=%s peer=%s reason=%s", job_id, peer, exc.reason)
            return {"t": "refused", "job_id": job_id, "reason": exc.reason}

    async def _deploy(
        self,
        req: deploy_rules.DeployRequest,
        accepted: Callable[[int], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        if self.chain is None:
            raise DeployRefused("this provider has no chain configured")
        digest = assign_digest(self.chain.domain, req.job_id, req.round, req.provider)
        existing = self.state.get_job(req.job_id)
        if existing is not None and existing.live:
            if existing.qc_digest != digest:
                raise DeployRefused(f"job {req.job_id} already runs here for round {existing.round}")
            if existing.state == "deploying":
                # Accepted, but the deploy that accepted it did not finish (we hold the
                # job's lock, so none is under way): finish it now instead of answering
                # "deployed" for a container that may not exist.
                return await self._finish_deploy(existing)
            # Idempotent: the same certificate again gets the running deployment
            return self._deployed_reply(existing)
        if not self.accepting or self.runtime is None:
            raise DeployRefused("no container engine: this provider accepts no deploys now")
        job, chain_set, chain_time = await self.chain.job_and_checkers(req.job_id)
        try:
            checkers = make_checker_set(zip(chain_set.node_keys, chain_set.stakes, strict=True))
        except CheckerSetError as exc:
            raise DeployRefused(f"no usable checker set on chain: {exc}") from None
        deploy_rules.check_deploy(req, self.address, job, checkers, self.chain.domain)
        trace.mark("provider_checked", req.job_id)
        count = max(job.count, 1)
        free = self.free_slots()
        if len(free) < count:
            raise DeployRefused(f"needs {count} GPUs, {len(free)} free")
        now = self.clock()
        expires = now + seconds_left(job, chain_time)
        if expires <= now:
            raise DeployRefused(f"job {req.job_id} has no time left")
        rec = JobRecord(
            job_id=req.job_id, round=req.round, qc_digest=digest, qc_sigs=req.sigs,
            owner=job.owner, image=job.image, port=job.port, gpus=tuple(free[:count]),
            state="deploying", reason="", container_id="", host_port=None,
            started=now, expires=expires,
        )
        self.state.put_job(rec)  # durable before the container exists: restart finds it
        self.changed()
        if accepted is not None:
            await accepted(req.job_id)
        # If this task is cancelled from here on (the checker's connection went away),
        # the job stays "deploying": the next deploy of the same certificate or the
        # monitor (_resume_stalled_deploy) finishes it. Before, a half-done deploy
        # answered every later deploy "deployed" with no container, so no checker ever
        # failed it (a soak job was paid for 77 s and never served).
        return await self._finish_deploy(rec)

    async def _finish_deploy(self, rec: JobRecord) -> dict[str, Any]:
        """Start the container of an accepted job and publish the outcome (the caller
        holds the job's lock: a deploy, or the monitor resuming a stalled one)."""
        assert self.runtime is not None
        devices = rec.gpus if self.gpu_devices else ()
        try:
            info = await self.runtime.start(
                rec.job_id, rec.image, rec.port, gpus=devices, limits=self.settings.limits
            )
        except ContainerError as exc:
            await self._set_state(rec, msg.FAILED, f"start failed: {exc.message}"[:500])
            return {"t": "failed", "job_id": rec.job_id, "reason": rec.reason}
        rec.container_id, rec.host_port = info.container_id, info.host_port
        self.state.update_job(rec.job_id, container_id=info.container_id, host_port=info.host_port)
        await self._set_state(rec, msg.RUNNING, "", status=msg.DEPLOYED, notify_owner=True)
        trace.mark("status_published", rec.job_id)
        log.info(
            "event=job_deployed job=%d image=%s port=%d host_port=%s",
            rec.job_id, rec.image, rec.port, info.host_port,
        )
        return self._deployed_reply(rec)

    async def _seconds_left(self, job: Any) -> float:
        if job.state == JOB_ASSIGNED:
            block = await self.chain.client.get_block("latest")  # type: ignore[union-attr]
            return seconds_left(job, int(block["timestamp"]))
        return float(job.remaining)

    def _deployed_reply(self, rec: JobRecord) -> dict[str, Any]:
        return {
            "t": "deployed",
            "job_id": rec.job_id,
            "qc_digest": rec.qc_digest,
            "container_port": rec.port,
            "state": rec.state,
            "peer": self.peer,
        }

    # status -------------------------------------------------------------------------------

    def status_envelope(self, rec: JobRecord, state: str | None = None) -> Any:
        ttl = int(min(max(self.settings.status_interval * 3, 10.0), 600.0) * 1000)
        return self.host.sign(
            "JobStatus",
            {
                "job_id": rec.job_id,
                "round": rec.round,
                # "deploying" until the container runs: a client must not be told a
                # job is deployed while its tunnel would still be refused.
                "state": state or rec.state,
                "reason": rec.reason[:500],
                "qc_digest": rec.qc_digest,
                "peer": self.peer,
                "container_port": rec.port,
                "image": rec.image,
                "started": int(rec.started),
                "expires": int(rec.expires),
            },
            ttl_ms=ttl,
        )

    async def publish_status(self, rec: JobRecord, state: str | None = None) -> None:
        await self._publish_status_env(rec, self.status_envelope(rec, state))

    async def _publish_status_env(self, rec: JobRecord, env: Any) -> None:
        try:
            await self.host.publish(msg.STATUS_TOPIC, env)
        except Exception as exc:  # no peers: the heartbeat repeats it
            log.debug("event=status_publish_failed job=%d err=%s", rec.job_id, exc)

    async def notify_owner(self, rec: JobRecord, env: Any) -> int:
        """Push the signed status and the QC to the job owner's connected peer(s), so a
        waiting client learns the deployment now rather than from gossip or its poll.
        Best effort (gossip and status queries stay the fallback); returns pushes made."""
        owner = rec.owner.lower()
        frame = {"t": "status", "status": env.to_bytes(), "qc_sigs": list(rec.qc_sigs)}
        sent = 0
        for peer in self.host.connected_peers():
            try:
                if peer_id_to_address(peer).lower() != owner:
                    continue
            except Exception:  # not a secp256k1 peer id: not an owner's key
                continue
            try:
                with trio.fail_after(NOTIFY_TIMEOUT):
                    async with self.host.open_stream(peer, msg.NOTIFY_PROTOCOL) as framed:
                        await framed.send(frame, timeout=NOTIFY_TIMEOUT)
                sent += 1
            except Exception as exc:  # an old client without the handler, a reset, a timeout
                log.info("event=owner_notify_failed job=%d peer=%s err=%s", rec.job_id, peer, exc)
        self.owner_notified += sent
        if not sent:
            log.info("event=owner_not_notified job=%d owner=%s", rec.job_id, rec.owner)
        return sent

    async def _set_state(
        self,
        rec: JobRecord,
        state: str,
        reason: str,
        *,
        status: str | None = None,
        notify_owner: bool = False,
    ) -> None:
        rec.state, rec.reason = state, reason
        self.state.update_job(rec.job_id, state=state, reason=reason)
        if state in (msg.STOPPED, msg.FAILED):
            self._ended_at[rec.job_id] = self.clock()
            for scope in self._tunnel_scopes.pop(rec.job_id, set()):
                scope.cancel()
            log.info("event=job_ended job=%d state=%s reason=%s", rec.job_id, state, reason)
        self.changed()
        env = self.status_envelope(rec, status)
        if notify_owner:  # first, and in parallel: the owner's client is waiting for it
            if self._nursery is not None:
                self._nursery.start_soon(self.notify_owner, rec, env)
            else:
                await self.notify_owner(rec, env)
        await self._publish_status_env(rec, env)

    async def end_job(self, job_id: int, state: str, reason: str) -> None:
        """Stop a job's container (kept for its logs until log_retention) and report it."""
        async with self._job_locks[job_id]:
            rec = self.state.get_job(job_id)
            if rec is None or not rec.live:
                return
            if self.runtime is not None:
                try:
                    await self.runtime.stop(job_id)
                except ContainerError as exc:
                    log.warning("event=stop_failed job=%d err=%s", job_id, exc)
            await self._set_state(rec, state, reason)

    async def _monitor_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.status_interval)
            try:
                await self.check_jobs()
            except Exception:  # one bad pass (engine hiccup, RPC outage) must not stop it
                log.exception("event=monitor_failed")

    async def check_jobs(self) -> None:
        """One monitor pass: expiry, chain state, container health, heartbeats, cleanup."""
        now = self.clock()
        poll_chain = self.chain is not None and now - self._last_chain_poll >= self.settings.chain_poll_interval
        if poll_chain:
            self._last_chain_poll = now
        for rec in self.state.jobs(live_only=True):
            if rec.state == "deploying":
                await self._resume_stalled_deploy(rec, now)
                continue
            if now >= rec.expires:
                await self.end_job(rec.job_id, msg.STOPPED, "expired")
                continue
            if poll_chain and await self._stop_if_ended_on_chain(rec):
                continue
            info = await self.runtime.status(rec.job_id) if self.runtime else None
            if info is None or not info.running:
                why = "container gone" if info is None else f"container {info.state} (exit {info.exit_code})"
                await self.end_job(rec.job_id, msg.FAILED, why)
                continue
            await self.publish_status(self.state.get_job(rec.job_id) or rec)
        for job_id, ended in list(self._ended_at.items()):
            if now - ended >= self.settings.log_retention and self.runtime is not None:
                await self.runtime.remove(job_id)
                del self._ended_at[job_id]

    async def _resume_stalled_deploy(self, rec: JobRecord, now: float) -> None:
        """A job accepted DEPLOY_STALL_S ago and still "deploying" with no deploy under
        way (its lock is free): finish it, or end it if its time is over."""
        lock = self._job_locks[rec.job_id]
        if lock.locked() or now - rec.started < DEPLOY_STALL_S or self.runtime is None:
            return
        log.warning("event=deploy_resumed job=%d since=%.0fs", rec.job_id, now - rec.started)
        if now >= rec.expires:  # stops a container the start got as far as, if any
            await self.end_job(rec.job_id, msg.STOPPED, "expired before it started")
            return
        async with lock:
            current = self.state.get_job(rec.job_id)
            if current is not None and current.state == "deploying":
                await self._finish_deploy(current)

    async def _stop_if_ended_on_chain(self, rec: JobRecord) -> bool:
        """Stop the job if the chain says it ended (closed, reassigned, expired)."""
        reason = await self._chain_end_reason(rec)
        if reason:
            await self.end_job(rec.job_id, msg.STOPPED, reason)
        return bool(reason)

    async def _chain_end_reason(self, rec: JobRecord) -> str:
        assert self.chain is not None
        try:
            job = await self.chain.get_job(rec.job_id)
        except Exception as exc:  # RPC outage: keep serving, ask again next time
            log.warning("event=chain_read_failed job=%d err=%s", rec.job_id, exc)
            return ""
        if job.state == JOB_ASSIGNED:
            if job.provider.lower() != self.address.lower() or job.round != rec.round:
                return "reassigned on chain"
            left = await self._seconds_left(job)
            self.state.update_job(rec.job_id, expires=self.clock() + left)  # extend
            return ""
        if job.state == JOB_OPEN and job.round <= rec.round:
            return ""  # the certificate has not reached the chain yet
        return f"ended on chain (state {job.state})"

    # owner-authorized streams -------------------------------------------------------------

    def authorize(self, token: msg.OwnerToken, *, need_running: bool) -> JobRecord:
        """Raise AccessDenied unless the token is the job owner's, fresh and unused."""
        rec = self.state.get_job(token.job_id)
        if rec is None:
            raise AccessDenied(f"job {token.job_id} is not deployed here")
        msg.check_token(self.domain, token, self.peer, rec.owner, self.clock())
        if not self.state.use_nonce(token.nonce, token.expiry, self.clock()):
            raise AccessDenied("token replayed (nonce already used)")
        if need_running and (rec.state != msg.RUNNING or not rec.host_port):
            raise AccessDenied(f"job {token.job_id} is not running ({rec.state})")
        return rec

    async def _refuse(self, framed: FramedStream, what: str, peer: ID, exc: AccessDenied, **extra) -> None:
        log.info("event=%s_refused peer=%s reason=%s", what, peer, exc.reason)
        await framed.send({"ok": False, "reason": exc.reason, **extra})

    async def _on_tunnel(self, framed: FramedStream, peer: ID) -> None:
        obj = await framed.recv(max_size=TOKEN_MAX_BYTES, timeout=TOKEN_TIMEOUT)
        try:
            offer = tunnel.take_offer(obj)  # the direct data path (node/p2p/datapath.py)
            token = msg.decode_token(obj, msg.ACTION_TUNNEL)
            rec = self.authorize(token, need_running=True)
            if self._tunnels[rec.job_id] >= self.settings.max_tunnels_per_job:
                raise AccessDenied(f"at most {self.settings.max_tunnels_per_job} tunnels per job")
            try:
                tcp = await trio.open_tcp_stream("127.0.0.1", rec.host_port)  # type: ignore[arg-type]
            except OSError as exc:
                raise AccessDenied(f"container port not reachable: {exc.strerror}") from None
        except AccessDenied as exc:
            await self._refuse(framed, "tunnel", peer, exc)
            return
        job_id = rec.job_id
        self._tunnels[job_id] += 1
        metrics.TUNNELS.labels(metrics.label(self.address)).inc()
        scope = trio.CancelScope()
        self._tunnel_scopes[job_id].add(scope)
        try:
            log.info("event=tunnel_open job=%d peer=%s", job_id, peer)
            with scope:
                st = await tunnel.serve(
                    framed, tcp, offer, job_id=job_id, client_peer=peer,
                    provider_peer=self.host.peer_id, server=self.data_path,
                )  # fmt: skip
                log.info(
                    "event=tunnel_closed job=%d in=%d out=%d end=%s",
                    job_id, st.a_to_b, st.b_to_a, st.ended_by,
                )  # fmt: skip
        finally:
            self._tunnels[job_id] -= 1
            metrics.TUNNELS.labels(metrics.label(self.address)).dec()
            self._tunnel_scopes[job_id].discard(scope)
            with trio.CancelScope(shield=True):
                await tcp.aclose()

    async def _on_logs(self, framed: FramedStream, peer: ID) -> None:
        obj = await framed.recv(max_size=TOKEN_MAX_BYTES, timeout=TOKEN_TIMEOUT)
        try:
            token = msg.decode_token(obj, msg.ACTION_LOGS)
            follow, tail = obj.get("follow", False), obj.get("tail", "all")
            if type(follow) is not bool or not (tail == "all" or (type(tail) is int and tail >= 0)):
                raise AccessDenied("malformed logs request: follow is a bool, tail an int or 'all'")
            rec = self.authorize(token, need_running=False)
            if self._log_streams[rec.job_id] >= self.settings.max_log_streams_per_job:
                raise AccessDenied(f"at most {self.settings.max_log_streams_per_job} log streams per job")
            if self.runtime is None:
                raise AccessDenied("no container engine")
        except AccessDenied as exc:
            await self._refuse(framed, "logs", peer, exc)
            return
        self._log_streams[rec.job_id] += 1
        try:
            await framed.send({"ok": True})
            reason = "end"
            try:
                async with self.runtime.logs(rec.job_id, follow=follow, tail=tail) as chunks:
                    async for chunk in chunks:
                        for i in range(0, len(chunk), LOG_FRAME_BYTES):
                            await framed.send({"t": "data", "data": chunk[i : i + LOG_FRAME_BYTES]})
            except ContainerError as exc:
                reason = exc.message
            await framed.send({"t": "end", "reason": reason})
        finally:
            self._log_streams[rec.job_id] -= 1
            if not self._log_streams[rec.job_id]:
                del self._log_streams[rec.job_id]

    async def _owner_request(self, framed: FramedStream, peer: ID, action: str) -> JobRecord | None:
        """The job of a one-frame owner request (status, closed); None once refused."""
        obj = await framed.recv(max_size=TOKEN_MAX_BYTES, timeout=TOKEN_TIMEOUT)
        try:
            return self.authorize(msg.decode_token(obj, action), need_running=False)
        except AccessDenied as exc:
            await self._refuse(framed, action, peer, exc)
            return None

    async def _on_status(self, framed: FramedStream, peer: ID) -> None:
        rec = await self._owner_request(framed, peer, msg.ACTION_STATUS)
        if rec is None:
            return
        await framed.send(
            {"ok": True, "status": self.status_envelope(rec).to_bytes(), "qc_sigs": list(rec.qc_sigs)}
        )

    async def _on_closed(self, framed: FramedStream, peer: ID) -> None:
        """The owner says it closed the job on chain. The chain decides: the job is read
        now instead of at the next chain poll (up to ``chain_poll_interval``, 10 s
        shipped, during which the container ran on and the slot looked taken)."""
        rec = await self._owner_request(framed, peer, msg.ACTION_CLOSED)
        if rec is None:
            return
        if rec.live and self.chain is not None:
            await self._stop_if_ended_on_chain(rec)
        current = self.state.get_job(rec.job_id) or rec
        await framed.send({"ok": True, "state": current.state})


__all__ = ["FrameError", "ProviderService", "ProviderSettings", "STATE_FILE"]
