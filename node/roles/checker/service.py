"""The checker role: ad index, PoPW committees, assignment votes, deploys, failures.

``CheckerService(host, identity, chain, data_dir, settings)`` runs one checker. ``await
nursery.start(service.run)`` reads the checker set from the chain, starts the
assignment engine (votes and locks in ``data_dir``), subscribes to ``ads/1``,
``attest/1``, ``assign/1`` and ``status/1``, and runs four loops in one nursery:

- chain events (``JobCreated``, ``JobReassigned``, ``JobAssigned``, ``JobClosed``):
  every open job goes to the engine (attempt = the job's failure count, first round =
  its round on chain), so a restarted checker picks up where the chain is; Rewards'
  ``Certified`` (a PASS certificate on chain) gives PoPW standing, so a restarted
  checker finds providers eligible at once, not after the next epoch's PoPW;
- PoPW: each epoch, challenge every fresh provider whose committee holds this checker
  (``/kaisar/popw/1``, ``run_challenge``), sign + store + gossip the attestation, form the
  PoPW QC from the committee's attestations and submit PASS certificates to Rewards;
- decisions: when a QC forms, checkers in the job's leader order (starting at the QC
  round's leader) take turns ``submit_backoff`` apart: the first sends the deploy command
  and, at the same time, submits the QC to the escrow; a later one only does what has
  not happened yet (job still open on chain; no deployed reply or status seen);
- failures: a refused or failed deploy, a ``failed`` JobStatus, or a provider whose ads
  stopped for ``status_timeout`` -> this checker signs a FailureVote and gossips it; a
  checker receiving one probes the provider itself (repeat deploy, which is idempotent)
  and signs only on its own evidence; a FailureVote quorum goes to ``Escrow.fail``,
  whose ``JobReassigned`` starts the next attempt.

Error rules: chain reverts for work another checker already did ("job not open",
"already credited", "not the current assignment") are expected and logged at info;
provider stream failures become verdicts or failure evidence; every handler and task is
guarded so one bad peer or RPC hiccup never stops the role.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak, to_canonical_address, to_checksum_address
from libp2p.peer.id import ID

from node import metrics, trace, wire
from node.chain.api import JOB_ASSIGNED, JOB_EXPIRED, JOB_FAILED, JOB_OPEN, KaisarChain
from node.chain.errors import ChainError
from node.chain.watcher import EventWatcher
from node.consensus import votes
from node.consensus.assignment import get_leader_order
from node.consensus.checkers import CheckerSet, make_checker_set
from node.consensus.committees import committee_rank, get_popw_committee, may_sign_popw_vote
from node.consensus.epochs import epoch_at_time, epoch_seed
from node.consensus.qc import (
    AssignQC,
    InvalidVote,
    PopwQC,
    SignedPopwVote,
    build_popw_qc,
    has_quorum,
    recover_signer,
    sign_popw_vote,
    verify_popw_qc,
    verify_popw_vote,
)
from node.consensus.scheduler import JobSpec, ProviderInfo, round_reason, why_not_eligible
from node.consensus.store import VoteConflict
from node.identity import Identity
from node.p2p import dial
from node.p2p.host import KaisarHost, P2PError
from node.p2p.relay import HopSettings, run_hop
from node.popw.classes import ClassTable, challenge_for, load_table
from node.popw.verifier import BUSY, FAIL, LATE, PASS
from node.roles.checker import messages as m
from node.roles.checker.engine import AssignmentEngine

log = logging.getLogger("kaisar.checker")

POPW_PROTOCOL = "/kaisar/popw/1"
VERDICT_OF = {PASS: votes.VERDICT_PASS, FAIL: votes.VERDICT_FAIL, LATE: votes.VERDICT_LATE}
SECONDS_PER_HOUR = 3600
# A JobCreated event in the newest blocks the watcher has read starts the job from the
# event itself (a new job is open in round 0 with no failures): no chain read before
# the round-0 leader proposes. Older ones (a restart catching up) are read from chain.
FRESH_EVENT_BLOCKS = 2
# The leader submits Escrow.assign at the provider's first deploy answer, or after this.
DEPLOY_ANSWER_WAIT = 1.0


@dataclass(frozen=True)
class CheckerSettings:
    epoch_seconds: float = 60.0
    round_timeout: float = 5.0
    popw: bool = True  # run PoPW challenges for this checker's committees
    popw_retry: float = 1.0  # base wait after a busy reply (jittered)
    popw_attempts: int = 6
    status_timeout: float = 30.0  # an assigned provider silent this long has failed
    submit_backoff: float = 2.0  # the i-th checker in submitter order waits i times this
    chain_poll: float = 0.5
    deploy_timeout: float = 60.0
    relay: HopSettings = HopSettings()  # the circuit relay hop offered to providers

    @classmethod
    def from_config(cls, c: Any) -> CheckerSettings:
        return cls(
            epoch_seconds=c.epoch_seconds,
            round_timeout=c.round_timeout,
            popw=c.popw,
            status_timeout=c.status_timeout,
            submit_backoff=c.submit_backoff,
            chain_poll=c.chain_poll,
            deploy_timeout=c.deploy_timeout,
            popw_attempts=c.popw_attempts,
            relay=HopSettings(
                enabled=c.relay,
                max_reservations=c.relay_max_reservations,
                max_circuits=c.relay_max_circuits,
                circuit_duration=c.relay_circuit_duration,
                circuit_bytes=c.relay_circuit_bytes,
                reservation_ttl=c.relay_reservation_ttl,
            ),
        )


@dataclass
class Ad:
    address: str
    peer: str
    addrs: list[str]
    gpu_class: str
    price: int  # wei per GPU-hour
    free: int
    accepting: bool
    issued: float  # seconds
    expiry: float  # seconds


@dataclass
class Assigned:
    provider: str
    round: int
    count: int
    since: float
    qc: AssignQC | None = None
    deployed: bool = False


@dataclass
class FailureTally:
    sigs: dict[str, bytes] = field(default_factory=dict)
    submitted: bool = False


def class_name(raw: bytes) -> str:
    return bytes(raw).rstrip(b"\x00").decode(errors="replace")


def job_spec(job: Any) -> JobSpec:
    """The scheduler's view of an on-chain job: the price cap per GPU-hour."""
    count = max(int(job.count), 1)
    return JobSpec(
        job.job_id, class_name(job.gpu_class), count, job.price * SECONDS_PER_HOUR // count
    )


@dataclass(frozen=True)
class _CreatedJob:
    """What ``job_spec`` reads of a job."""

    job_id: int
    gpu_class: bytes
    count: int
    price: int


def created_job_spec(args: Any) -> JobSpec:
    """``job_spec`` of a job from its JobCreated event (the same fields, as created)."""
    return job_spec(
        _CreatedJob(job_id=int(args["job_id"]), gpu_class=args["gpu_class"], count=args["count"],
            price=args["price"])
    )  # fmt: skip


class CheckerService:
    def __init__(
        self,
        host: KaisarHost,
        identity: Identity,
        chain: KaisarChain,
        data_dir: Path,
        settings: CheckerSettings = CheckerSettings(),
        *,
        classes: ClassTable | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Votes and gossip envelopes are signed by one key: the host's (the host requires
        # an envelope's signer to be the publishing peer).
        if identity.address != host.address:
            raise ValueError("a checker signs with its host's key: pass the host's identity")
        self.host = host
        self.identity = identity
        self.address = host.address
        self.chain = chain
        self.domain = chain.domain
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.classes = classes
        self.clock = clock
        self.checkers: CheckerSet | None = None
        self.engine: AssignmentEngine | None = None
        self.genesis_time = 0.0
        self.ads: dict[str, Ad] = {}
        self.standing: dict[str, int] = {}  # provider -> latest epoch with a PoPW PASS QC
        self.attestations: dict[tuple[int, str], dict[str, SignedPopwVote]] = {}
        self.popw_qcs: dict[tuple[int, str], PopwQC] = {}
        self.assigned: dict[int, Assigned] = {}
        self._counts: dict[int, int] = {}  # GPUs of the jobs seen created or reassigned
        self.status_seen: dict[int, tuple[float, str]] = {}
        self.failures: dict[tuple[int, int, str], FailureTally] = {}
        self._signed_failure: set[tuple[int, int]] = set()
        self._probed: set[tuple[int, int]] = set()
        self._challenged: set[tuple[int, str]] = set()
        self._status_subscribed = False
        self._nursery: trio.Nursery | None = None
        self._watcher: EventWatcher | None = None
        self.hop: Any = None  # the running relay hop (adapter.RelayHopProtocol)

    # lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        chain_set = await self.chain.active_checkers()
        self.checkers = make_checker_set(zip(chain_set.node_keys, chain_set.stakes, strict=True))
        if self.address not in self.checkers:
            log.warning("event=not_an_active_checker address=%s votes=ignored", self.address)
        block = await self.chain.client.get_block(self.chain.deployment.block)
        self.genesis_time = float(block["timestamp"])
        if self.classes is None and self.settings.popw:
            self.classes = await trio.to_thread.run_sync(load_table)
        self.engine = AssignmentEngine(
            self.host, self.identity, self.domain, self.checkers, self.data_dir,
            timeout_base=self.settings.round_timeout, on_decided=self._on_decided,
            on_message=self._on_assign_message, view=self.view, explain=self.explain,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.settings.relay.enabled:
                self.hop = await nursery.start(run_hop, self.host, self.settings.relay)
            await nursery.start(self.engine.run)
            await self.host.subscribe("ads/1", self._on_ad)
            await self.host.subscribe(m.ATTEST_TOPIC, self._on_attest)
            if self.host.topic("status/1") in self.host.pubsub.topic_ids:
                # py-libp2p hands a second subscriber the same queue (messages would be
                # split between the two readers); the node runner owns status/1 then,
                # and liveness falls back to the provider's ads.
                log.info("event=status_topic_shared liveness=ads")
            else:
                await self.host.subscribe("status/1", self._on_status)
                self._status_subscribed = True
            # Rewards too: its Certified events restore PoPW standing after a restart
            watcher = EventWatcher(
                self.chain.client, [self.chain.escrow, self.chain.rewards],
                from_block=self.chain.deployment.block,
                poll_interval=self.settings.chain_poll,
            )  # fmt: skip
            self._watcher = watcher
            send, recv = trio.open_memory_channel[Any](256)
            await nursery.start(watcher.run, send)
            nursery.start_soon(self._event_loop, recv)
            if self.settings.popw:
                nursery.start_soon(self._popw_loop)
            nursery.start_soon(self._failure_loop)
            log.info(
                "event=checker_started address=%s checkers=%d", self.address, len(self.checkers)
            )
            task_status.started(self)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except (ChainError, P2PError) as exc:
            log.info("event=task_failed fn=%s err=%s", getattr(fn, "__name__", fn), exc)
        except Exception:
            log.exception("event=task_failed fn=%s", getattr(fn, "__name__", fn))

    # epochs and the provider view ------------------------------------------------

    def epoch(self) -> int:
        return epoch_at_time(int(self.genesis_time), self.clock(), int(self.settings.epoch_seconds))

    def seed(self, epoch: int) -> bytes:
        # Randomness: the deployment (Staking address). Predictable, but no checker can
        # pick it; a block-hash seed needs block-based epochs (see docs/CHECKER.md).
        return epoch_seed(epoch, keccak(to_canonical_address(self.chain.deployment.staking)))

    def committee(self, epoch: int, provider: str) -> CheckerSet:
        assert self.checkers is not None
        return get_popw_committee(self.checkers, self.seed(epoch), provider)

    def fresh_ads(self) -> list[Ad]:
        now = self.clock()
        return [ad for ad in self.ads.values() if ad.expiry > now]

    def view(self, spec: JobSpec) -> tuple[list[ProviderInfo], int]:
        """Fresh, accepting providers with this checker's PoPW standing and capacity."""
        out = []
        for ad in self.fresh_ads():
            if not ad.accepting:
                continue
            pending = sum(
                a.count for j, a in self.assigned.items()
                if a.provider == ad.address and a.since > ad.issued and j != spec.job_id
            )  # fmt: skip
            out.append(
                ProviderInfo(
                    ad.address,
                    ad.gpu_class,
                    max(ad.free - pending, 0),
                    ad.price,
                    self.standing.get(ad.address),
                )  # fmt: skip
            )
        return out, self.epoch()

    def explain(self, spec: JobSpec) -> tuple[str, dict[str, str]]:
        """Why this checker's view has no provider to propose for ``spec``: the round's
        reason (``scheduler.round_reason``: "eligible" if some provider is) and each
        provider's miss, over every provider an ad was ever heard from."""
        providers, epoch = self.view(spec)
        fresh = {p.address: p for p in providers}
        now = self.clock()
        misses: dict[str, str] = {}
        for address, ad in self.ads.items():
            p = fresh.get(address)
            if p is not None:
                misses[address] = why_not_eligible(spec, p, epoch)
            else:
                misses[address] = "stale_ad" if ad.expiry <= now else "not_accepting"
        return round_reason(misses.values()), misses

    async def _on_ad(self, env: wire.Envelope, peer: ID) -> None:
        b = env.body  # the envelope signer is the provider (the host checked it)
        self.ads[env.signer] = Ad(
            env.signer, b["peer"], list(b["addrs"]), b["gpu_class"], b["price_per_gpu_hour_wei"],
            b["gpus_free"], b["accepting"], b["issued"] / 1000, b["expiry"] / 1000,
        )  # fmt: skip

    async def _connect(self, ad: Ad) -> ID:
        """Reach the provider of ``ad``: its direct addresses, then its relay addresses."""
        peer = ID.from_base58(ad.peer)
        try:
            await dial.connect(self.host, peer, ad.addrs)
        except P2PError as exc:  # the stream opener says it again, with its own context
            log.info("event=provider_unreachable provider=%s err=%s", ad.address, exc)
        return peer

    # chain events -------------------------------------------------------------------

    async def _event_loop(self, recv: trio.MemoryReceiveChannel) -> None:
        async for ev in recv:
            try:
                await self._on_event(ev)
            except ChainError as exc:
                log.warning("event=chain_event_failed name=%s err=%s", ev.name, exc)

    async def _on_event(self, ev: Any) -> None:
        assert self.engine is not None
        job_id = int(ev.args.get("job_id", -1))
        if ev.name == "JobCreated" and self._fresh(ev):
            trace.mark("checker_saw_job", job_id)
            # Open in round 0 by construction; if a quorum assigned it meanwhile (the same
            # race as a chain read just before), its JobAssigned event follows and settles it.
            spec = created_job_spec(ev.args)
            self._counts[job_id] = max(int(ev.args["count"]), 1)
            providers, epoch = self.view(spec)
            self.assigned.pop(job_id, None)
            self.status_seen.pop(job_id, None)
            await self.engine.start_job(spec, providers, epoch, attempt=0, first_round=0)
        elif ev.name in ("JobCreated", "JobReassigned"):
            trace.mark("checker_saw_job", job_id)
            job = await self.chain.get_job(job_id)
            self._counts[job_id] = max(int(job.count), 1)
            if job.state == JOB_OPEN:
                spec = job_spec(job)
                providers, epoch = self.view(spec)
                self.assigned.pop(job_id, None)
                # the last round's status says nothing about the next provider: without
                # this, a reassigned job's new deploy was skipped as "already running"
                self.status_seen.pop(job_id, None)
                await self.engine.start_job(
                    spec, providers, epoch, attempt=job.failures, first_round=job.round
                )
            elif job.state == JOB_ASSIGNED:
                self._note_assigned(job_id, job.provider, job.round, job.count)
        elif ev.name == "JobAssigned":
            count = self._counts.get(job_id)
            if count is not None and self._fresh(ev):
                # Fresh: the event is the assignment as of the newest block; a later
                # change (reassignment, close) is a later event. No chain read: four
                # checkers reading the job here held the chain just when the provider
                # reads it before the deploy.
                provider = to_checksum_address(ev.args["provider"])
                self._note_assigned(job_id, provider, int(ev.args["round"]), count)
                self.engine.forget(job_id)
            else:
                job = await self.chain.get_job(job_id)
                if job.state == JOB_ASSIGNED:
                    self._note_assigned(job_id, job.provider, job.round, job.count)
                    self.engine.forget(job_id)
        elif ev.name == "JobClosed":
            state = int(ev.args.get("state", 0))
            if state == JOB_EXPIRED:
                # never assigned in its window: say why, per round, for soaks and operators
                rounds, reasons = self.engine.round_summary(job_id)
                log.info(
                    "event=job_unassigned job=%d rounds=%d reasons=%s", job_id, rounds,
                    ",".join(f"{k}:{v}" for k, v in sorted(reasons.items())) or "none",
                )  # fmt: skip
            elif state == JOB_FAILED:
                log.info(
                    "event=job_failed job=%d provider_paid=%d refund=%d", job_id,
                    int(ev.args.get("provider_paid", 0)), int(ev.args.get("refund", 0)),
                )  # fmt: skip
            self.assigned.pop(job_id, None)
            self._counts.pop(job_id, None)
            self.engine.forget(job_id)
        elif ev.name == "Certified":
            # A PASS certificate credited on chain (>= 2/3 of stake signed it): standing
            # lives only in memory, so without this a restarted checker saw no provider
            # eligible until the next epoch's PoPW QC (a minute), could not prevote any
            # proposal, and with one more checker down no job could be assigned.
            provider = to_checksum_address(ev.args["provider"])
            epoch = int(ev.args["epoch"])
            self.standing[provider] = max(self.standing.get(provider, epoch), epoch)

    def _fresh(self, ev: Any) -> bool:
        """Is ``ev`` from the newest blocks the (caught-up) watcher has read?"""
        w = self._watcher
        return (
            w is not None
            and w.caught_up
            and ev.block_number >= w.next_block - 1 - FRESH_EVENT_BLOCKS
        )

    def _note_assigned(self, job_id: int, provider: str, round_: int, count: int) -> None:
        a = self.assigned.get(job_id)
        if a is None or (a.provider, a.round) != (provider, round_):
            qc = self.engine.decided(job_id) if self.engine else None
            self.assigned[job_id] = Assigned(
                provider, round_, max(int(count), 1), self.clock(),
                qc if qc is not None and qc.round == round_ else None,
            )  # fmt: skip

    # decisions: chain + deploy ----------------------------------------------------------

    def _turn(self, job_id: int, round_: int) -> int:
        """This checker's place in the job's submitter order (the round's leader first)."""
        assert self.checkers is not None
        order = get_leader_order(self.checkers, job_id)
        start = round_ % len(order)
        rotated = order[start:] + order[:start]
        return rotated.index(self.address) if self.address in rotated else len(rotated)

    async def _on_decided(self, qc: AssignQC) -> None:
        a = self.assigned.setdefault(
            qc.job_id, Assigned(qc.provider, qc.round, 1, self.clock(), qc)
        )
        if a.qc is None and a.round == qc.round:
            a.qc = qc
        await trio.sleep(self._turn(qc.job_id, qc.round) * self.settings.submit_backoff)
        # The deploy command goes out while the assignment is mined, not after: the QC
        # alone certifies it, and the provider accepts a job that is still open on chain
        # in this round (it checks the job and the QC itself, see provider/deploy.py).
        now = self.assigned.get(qc.job_id)
        seen = self.status_seen.get(qc.job_id)
        deployed = (now is not None and now.deployed) or (
            seen is not None and seen[1] in ("deployed", "running")
        )
        # A failed deploy is reported once the assignment is on chain: the contract only
        # takes failure votes for the current assignment.
        submitted = trio.Event()
        if not deployed:
            answered = trio.Event()
            self._spawn(self._deploy, qc, submitted, answered)
            # The assignment goes out once the provider answered (its checks passed, or
            # a refusal), at the latest after DEPLOY_ANSWER_WAIT: mined at the same time,
            # the assign held up the deploy's delivery and the provider's chain reads (on
            # one in-process chain, 40-240 ms) while the client needs it only once the
            # container is up.
            with trio.move_on_after(DEPLOY_ANSWER_WAIT):
                await answered.wait()
        try:
            job = await self.chain.get_job(qc.job_id)
            if job.state == JOB_OPEN and job.round <= qc.round:
                try:
                    trace.mark("assign_tx_sent", qc.job_id)
                    await self.chain.assign(
                        self.identity, qc.job_id, qc.round, qc.provider, qc.signatures
                    )
                    trace.mark("assign_tx_mined", qc.job_id)
                    log.info("event=assign_submitted job=%d round=%d", qc.job_id, qc.round)
                except ChainError as exc:  # another checker's submission landed first
                    log.info("event=assign_not_needed job=%d err=%s", qc.job_id, exc)
        finally:
            submitted.set()

    async def _deploy(
        self,
        qc: AssignQC,
        submitted: trio.Event | None = None,
        answered: trio.Event | None = None,
    ) -> None:
        """Send the deploy command; a refusal or failure becomes failure evidence (after
        ``submitted``: this checker's own assignment attempt has ended). ``answered`` is
        set at the provider's first answer ("accepted" or the reply) or when none can come."""
        from node.roles.provider.client import send_deploy

        answered = answered if answered is not None else trio.Event()
        try:
            ad = self.ads.get(qc.provider)
            if ad is None:
                log.warning("event=deploy_no_ad job=%d provider=%s", qc.job_id, qc.provider)
                return
            peer = await self._connect(ad)
            trace.mark("deploy_sent", qc.job_id)
            try:
                reply = await send_deploy(
                    self.host, peer, qc, timeout=self.settings.deploy_timeout,
                    on_accepted=answered.set,
                )  # fmt: skip
            except (P2PError, Exception) as exc:
                reply = {"t": "unreachable", "reason": str(exc)}
        finally:
            answered.set()
        t = reply.get("t") if isinstance(reply, dict) else None
        if t == "deployed":
            trace.mark("deploy_replied", qc.job_id)
            a = self.assigned.get(qc.job_id)
            if a is not None:
                a.deployed = True
            log.info("event=deploy_sent job=%d provider=%s", qc.job_id, qc.provider)
            return
        reason = str(reply.get("reason", t))[:200] if isinstance(reply, dict) else "bad reply"
        log.warning(
            "event=deploy_failed job=%d provider=%s reply=%s reason=%s",
            qc.job_id,
            qc.provider,
            t,
            reason,
        )
        if submitted is not None:
            await submitted.wait()
        await self._suspect(qc.job_id, qc.round, qc.provider, f"deploy {t}: {reason}")

    # failures ---------------------------------------------------------------------------

    async def _suspect(self, job_id: int, round_: int, provider: str, reason: str) -> None:
        """Own evidence of a failure: sign FailureVote once per (job, round) and gossip it."""
        job = await self.chain.get_job(job_id)
        if job.state != JOB_ASSIGNED or job.round != round_ or job.provider != provider:
            return  # the contract only takes the current assignment
        if self.clock() >= job.started + job.remaining:
            return  # its paid time is over: it ran its course (Escrow.fail refuses it now)
        if (job_id, round_) in self._signed_failure:
            return
        self._signed_failure.add((job_id, round_))
        sig = votes.sign(self.identity, votes.failure_digest(self.domain, job_id, round_, provider))
        log.warning(
            "event=failure_vote job=%d round=%d provider=%s reason=%s",
            job_id,
            round_,
            provider,
            reason,
        )
        env = self.host.sign(
            "FailureVoteMsg",
            {"job_id": job_id, "round": round_, "provider": to_canonical_address(provider),
             "reason": reason[:250], "vote_sig": sig},
        )  # fmt: skip
        try:
            await self.host.publish(m.ASSIGN_TOPIC, env)
        except Exception as exc:
            log.warning("event=publish_failed type=FailureVoteMsg err=%s", exc)
        await self._add_failure_vote(job_id, round_, provider, self.address, sig)

    async def _on_assign_message(self, env: wire.Envelope) -> None:
        if env.type != "FailureVoteMsg":
            return
        b = env.body
        provider = m.addr(b["provider"])
        await self._add_failure_vote(b["job_id"], b["round"], provider, env.signer, b["vote_sig"])
        key = (b["job_id"], b["round"])
        if key not in self._probed and key not in self._signed_failure:
            self._probed.add(key)
            self._spawn(self._probe, b["job_id"], b["round"], provider)

    async def _probe(self, job_id: int, round_: int, provider: str) -> None:
        """Another checker reports a failure: check the provider ourselves before signing."""
        a = self.assigned.get(job_id)
        ad = self.ads.get(provider)
        if ad is None or ad.expiry <= self.clock():
            await self._suspect(job_id, round_, provider, "no fresh ad from the provider")
            return
        qc = a.qc if a is not None else None
        if qc is None and self.engine is not None:
            qc = self.engine.decided(job_id)
        if qc is not None and qc.round == round_:
            await self._deploy(qc)  # idempotent when healthy; refused/failed -> _suspect

    async def _add_failure_vote(
        self, job_id: int, round_: int, provider: str, signer: str, sig: bytes
    ) -> None:
        assert self.checkers is not None
        if signer not in self.checkers:
            return
        digest = votes.failure_digest(self.domain, job_id, round_, provider)
        if recover_signer(digest, sig) != signer:
            return
        tally = self.failures.setdefault((job_id, round_, provider), FailureTally())
        tally.sigs[signer] = sig
        total = self.checkers.total_stake
        if tally.submitted or not has_quorum(self.checkers.stake_of_all(tally.sigs), total):
            return
        tally.submitted = True
        self._spawn(self._submit_failure, job_id, round_, provider, tally)

    async def _submit_failure(
        self, job_id: int, round_: int, provider: str, tally: FailureTally
    ) -> None:
        await trio.sleep(self._turn(job_id, round_ + 1) * self.settings.submit_backoff)
        job = await self.chain.get_job(job_id)
        if job.state != JOB_ASSIGNED or job.round != round_:
            return
        sigs = [tally.sigs[s] for s in sorted(tally.sigs, key=str.lower)]
        try:
            await self.chain.fail(self.identity, job_id, round_, provider, sigs)
            log.info(
                "event=failure_submitted job=%d round=%d provider=%s", job_id, round_, provider
            )
        except ChainError as exc:
            log.info("event=failure_not_needed job=%d err=%s", job_id, exc)

    async def _on_status(self, env: wire.Envelope, peer: ID) -> None:
        if env.type != "JobStatus":
            return
        b = env.body
        a = self.assigned.get(b["job_id"])
        if a is None or env.signer != a.provider or b["round"] != a.round:
            return
        self.status_seen[b["job_id"]] = (self.clock(), b["state"])
        if b["state"] in ("deployed", "running"):
            a.deployed = True
        elif b["state"] == "failed":
            self._spawn(
                self._suspect,
                b["job_id"],
                a.round,
                a.provider,
                f"provider reports failed: {b['reason'][:150]}",
            )

    async def _failure_loop(self) -> None:
        while True:
            await trio.sleep(max(self.settings.status_timeout / 4, 0.2))
            for job_id, a, reason in self.overdue(self.clock()):
                self._spawn(self._suspect, job_id, a.round, a.provider, reason)

    def overdue(self, now: float) -> list[tuple[int, Assigned, str]]:
        """Assignments this checker suspects: missed heartbeats (no status, or without
        status/1 no ad, for status_timeout), or no "deployed"/"running" status within
        deploy_timeout of the assignment (a provider that accepted and never started
        the container, yet still answers: a soak job was paid 77 s unserved)."""
        out = []
        for job_id, a in list(self.assigned.items()):
            if now - a.since < self.settings.status_timeout:
                continue
            ad = self.ads.get(a.provider)
            last_ad = ad.issued if ad is not None else 0.0
            last = (
                self.status_seen.get(job_id, (0.0, ""))[0]
                if self._status_subscribed
                else last_ad
            )
            if now - max(last, 0.0) > self.settings.status_timeout:
                out.append((job_id, a, "missed heartbeats"))
            elif self._status_subscribed and not a.deployed and now - a.since > self.settings.deploy_timeout:
                out.append((job_id, a, f"not deployed {self.settings.deploy_timeout:g} s after assignment"))
        return out

    # PoPW -------------------------------------------------------------------------------

    async def _popw_loop(self) -> None:
        while True:
            epoch = self.epoch()
            for ad in self.fresh_ads():
                key = (epoch, ad.address)
                if key in self._challenged or self.address not in self.committee(epoch, ad.address):
                    continue
                self._challenged.add(key)
                self._spawn(self._challenge, epoch, ad)
            await trio.sleep(0.25)

    async def _challenge(self, epoch: int, ad: Ad) -> None:
        from node.popw.challenge import PopwError
        from node.popw.protocol import run_challenge

        assert self.classes is not None
        try:
            cls = self.classes.get(ad.gpu_class)
        except Exception:
            log.info("event=popw_unknown_class provider=%s class=%s", ad.address, ad.gpu_class)
            return
        await trio.sleep(random.random() * self.settings.popw_retry)  # spread committee members
        verdict = None
        for _ in range(self.settings.popw_attempts):
            try:
                peer = await self._connect(ad)
                async with self.host.open_stream(peer, POPW_PROTOCOL) as framed:
                    verdict = await run_challenge(
                        framed,
                        challenge_for(cls, self.classes.policy),
                        k=self.classes.policy.openings,
                    )
            except (P2PError, PopwError) as exc:
                log.info("event=popw_unreachable provider=%s err=%s", ad.address, exc)
                verdict = None
            if verdict is not None and verdict.status != BUSY:
                break
            await trio.sleep(self.settings.popw_retry * (0.5 + random.random()))
        if verdict is not None:
            metrics.POPW_VERDICTS.labels(metrics.label(self.address), verdict.status).inc()
        if verdict is None or verdict.status == BUSY or self.epoch() != epoch:
            return
        await self._attest(
            epoch,
            ad.address,
            VERDICT_OF[verdict.status],
            votes.gpu_class_id(ad.gpu_class),
            verdict.tflops,
        )

    async def _attest(
        self, epoch: int, provider: str, verdict: int, gpu_class: bytes, tflops: float
    ) -> None:
        assert self.engine is not None
        store = self.engine.machine(0).store
        assert store is not None
        previous = store.popw_vote(epoch, provider)
        if not may_sign_popw_vote(previous[:2] if previous else None, verdict, gpu_class):
            return
        vote = sign_popw_vote(self.identity, self.domain, epoch, provider, verdict, gpu_class)
        if previous is not None:
            vote = SignedPopwVote(epoch, provider, verdict, gpu_class, self.address, previous[2])
        try:
            store.record_popw_vote(epoch, provider, verdict, gpu_class, vote.signature)
        except VoteConflict:
            return
        log.info(
            "event=popw_attested epoch=%d provider=%s verdict=%d tflops=%.4f",
            epoch,
            provider,
            verdict,
            tflops,
        )
        env = self.host.sign("PopwAttest", m.popw_attest_fields(vote, tflops))
        try:
            await self.host.publish(m.ATTEST_TOPIC, env)
        except Exception as exc:
            log.warning("event=publish_failed type=PopwAttest err=%s", exc)
        await self._add_attestation(vote)

    async def _on_attest(self, env: wire.Envelope, peer: ID) -> None:
        if env.type == "PopwAttest":
            await self._add_attestation(m.popw_vote_from(env))
        elif env.type == "PopwQCMsg":
            qc = m.popw_qc_from(env)
            if qc.epoch not in (self.epoch(), self.epoch() - 1):
                return
            if (qc.epoch, qc.provider) in self.popw_qcs:
                return
            committee = self.committee(qc.epoch, qc.provider)
            try:
                verify_popw_qc(self.domain, committee, qc, qc.epoch)
            except (InvalidVote, ValueError):
                return
            await self._on_popw_qc(qc, formed_here=False)

    async def _add_attestation(self, vote: SignedPopwVote) -> None:
        if vote.epoch not in (self.epoch(), self.epoch() - 1):
            return
        committee = self.committee(vote.epoch, vote.provider)
        try:
            verify_popw_vote(self.domain, committee, vote, vote.epoch)
        except InvalidVote:
            return
        key = (vote.epoch, vote.provider)
        got = self.attestations.setdefault(key, {})
        got.setdefault(vote.signer, vote)
        if key in self.popw_qcs:
            return
        qc = build_popw_qc(self.domain, committee, got.values(), vote.epoch)
        if qc is not None:
            await self._on_popw_qc(qc, formed_here=True)

    async def _on_popw_qc(self, qc: PopwQC, *, formed_here: bool) -> None:
        self.popw_qcs[(qc.epoch, qc.provider)] = qc
        if qc.verdict == votes.VERDICT_PASS:
            self.standing[qc.provider] = max(self.standing.get(qc.provider, qc.epoch), qc.epoch)
        log.info("event=popw_qc epoch=%d provider=%s verdict=%d", qc.epoch, qc.provider, qc.verdict)
        if formed_here:
            metrics.QCS.labels(metrics.label(self.address), "popw").inc()
        if formed_here:
            try:
                await self.host.publish(
                    m.ATTEST_TOPIC, self.host.sign("PopwQCMsg", m.popw_qc_fields(qc))
                )
            except Exception as exc:
                log.warning("event=publish_failed type=PopwQCMsg err=%s", exc)
        if qc.verdict == votes.VERDICT_PASS:
            self._spawn(self._submit_popw, qc)

    async def _submit_popw(self, qc: PopwQC) -> None:
        assert self.checkers is not None
        committee = self.committee(qc.epoch, qc.provider)
        if self.address not in committee:
            return
        signers = [recover_signer(qc.digest(self.domain), s) for s in qc.signatures]
        # Rewards checks 2/3 of the *whole* active set (Staking.quorum_signers)
        if not has_quorum(
            self.checkers.stake_of_all(s for s in signers if s), self.checkers.total_stake
        ):
            log.info("event=popw_qc_below_chain_quorum epoch=%d provider=%s", qc.epoch, qc.provider)
            return
        seed = self.seed(qc.epoch)
        order = sorted(committee.addresses, key=lambda c: committee_rank(seed, qc.provider, c))
        await trio.sleep(order.index(self.address) * self.settings.submit_backoff)
        rewards = self.chain.rewards.functions
        if await self.chain.client.call(rewards.credited(qc.epoch, qc.provider)):
            return
        try:
            await self.chain.submit_popw(
                self.identity, qc.epoch, qc.provider, qc.gpu_class, qc.signatures
            )
            log.info("event=popw_submitted epoch=%d provider=%s", qc.epoch, qc.provider)
        except ChainError as exc:
            log.info(
                "event=popw_not_needed epoch=%d provider=%s err=%s", qc.epoch, qc.provider, exc
            )
