"""The assignment engine: ``AssignmentMachine`` wired to gossip, timers and callbacks.

``AssignmentEngine(host, identity, domain, checkers, data_dir, ...)`` owns the machines
and their SQLite vote stores in ``data_dir``. ``await nursery.start(engine.run)``
subscribes to ``assign/1``; then ``await engine.start_job(spec, providers, epoch)`` for
each job the chain says is open. The engine carries out what the machine returns:

- ``Broadcast``: publish an ``AssignVoteMsg`` / ``AssignQCMsg`` on ``assign/1``. The
  machine commits its own vote to the store (fsync) *before* returning it, so a crash
  here can lose a message, never produce a conflicting one; after a restart
  ``start_job`` re-sends the stored vote with the same signature.
- ``StartTimer``: a task in the engine's nursery calls ``on_timeout`` later, after
  refreshing the job's provider view (``view(spec)``), so a job that arrived before any
  provider was verified is proposed again with what is known now.
- ``Decided``: ``on_decided(qc)`` runs as a task (deploy + chain submission).
- ``Slash``: ``on_slash(evidence)`` (if given).

Reassignment. The chain reopens a failed job at ``round + 1`` (``JobReassigned``) but
the machine's lock for the job ("a QC was seen: sign nothing else") is for ever. A new
*attempt* therefore gets its own machine and store (``votes.sqlite`` for attempt 0,
``votes.a<k>.sqlite`` after the k-th failure). Before the first vote of attempt k, every
own vote of earlier attempts in rounds >= the reopened round is copied into the new
store, so the vote rule still sees them: a checker never signs two providers for one
(job, round), across attempts and restarts. Rounds below the reopened one are closed by
the contract (``round >= job.round``) and never signed again.

Votes and QCs for a job the engine has not started yet are buffered (bounded) and
replayed into the machine when the job starts.

Error rules: a message that fails validation is dropped by the machine (``rejected``);
``on_decided`` / ``on_slash`` exceptions are logged, never kill the engine; a failed
publish (no peers) is logged, and the timers re-send nothing: gossip relays and the
next round's votes make up for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from node import metrics, wire
from node.consensus.checkers import CheckerSet
from node.consensus.evidence import Evidence
from node.consensus.machine import (
    AssignmentMachine,
    Broadcast,
    Decided,
    Output,
    Slash,
    StartTimer,
)
from node.consensus.qc import AssignQC, SignedAssignVote
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.store import VoteConflict, VoteStore
from node.eip712 import Domain
from node.identity import Identity
from node.roles.checker import messages as m

log = logging.getLogger("kaisar.checker.engine")

MAX_BUFFERED_JOBS = 10_000
MAX_BUFFERED_PER_JOB = 1024
STORE_FILE = "votes.sqlite"

View = Callable[[JobSpec], tuple[Sequence[ProviderInfo], int]]

# Test-only fault injection, off unless the variable names a marker file: the process
# exits right after its first own vote was signed (and persisted by the machine) and
# before it is gossiped, writing the vote to the marker (tests/test_restart_checker.py).
CRASH_AFTER_SIGN_ENV = "KAISAR_TEST_CRASH_AFTER_SIGN"


def _crash_after_sign(vote: SignedAssignVote) -> None:
    marker = os.environ.get(CRASH_AFTER_SIGN_ENV)
    if not marker or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(json.dumps({"job": vote.job_id, "round": vote.round, "provider": vote.provider,
                            "signature": vote.signature.hex()}))  # fmt: skip
    os._exit(86)


def store_path(data_dir: Path, attempt: int) -> Path:
    return data_dir / (STORE_FILE if attempt == 0 else f"votes.a{attempt}.sqlite")


class _Machine(AssignmentMachine):
    """The machine plus a first round: a reopened job starts at the chain's round."""

    def start_job(
        self, spec: JobSpec, providers: Sequence[ProviderInfo], epoch: int, first_round: int
    ) -> list[Output]:
        job = self._job(spec.job_id)
        job.round = max(job.round, first_round)
        return self.on_job(spec, providers, epoch)

    def refresh_view(self, job_id: int, providers: Sequence[ProviderInfo], epoch: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.spec is not None and job.qc is None:
            job.providers, job.epoch = tuple(providers), epoch


class AssignmentEngine:
    def __init__(
        self,
        host: Any,
        identity: Identity,
        domain: Domain,
        checkers: CheckerSet,
        data_dir: Path,
        *,
        timeout_base: float = 2.0,
        on_decided: Callable[[AssignQC], Awaitable[None]] | None = None,
        on_slash: Callable[[Evidence], Awaitable[None]] | None = None,
        on_message: Callable[[wire.Envelope], Awaitable[None]] | None = None,
        view: View | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.domain = domain
        self.checkers = checkers
        self.data_dir = Path(data_dir)
        self.timeout_base = timeout_base
        self.on_decided = on_decided
        self.on_slash = on_slash
        self.on_message = on_message
        self.view = view
        self.machines: dict[int, _Machine] = {}
        self.jobs: dict[int, tuple[int, int]] = {}  # job -> (attempt, first round)
        self.decisions: dict[int, AssignQC] = {}
        self._buffer: OrderedDict[int, list[SignedAssignVote | AssignQC]] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._settled: set[int] = set()  # forgotten jobs: late messages are dropped
        self._closed = False
        self.published = 0  # messages this engine published on assign/1 (bench metric)
        self.proposed_at: dict[int, float] = {}  # job -> trio time of own proposal (bench)
        self.decided_at: dict[int, float] = {}

    # lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.machine(0)  # open the main store now: a broken data_dir fails at start
                await self.host.subscribe(m.ASSIGN_TOPIC, self.on_gossip)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._closed = True  # the host may outlive us: later gossip is ignored
            for mach in self.machines.values():
                if mach.store is not None:
                    mach.store.close()

    def machine(self, attempt: int) -> _Machine:
        mach = self.machines.get(attempt)
        if mach is None:
            store = VoteStore.open(store_path(self.data_dir, attempt))
            mach = self.machines[attempt] = _Machine(
                self.identity, self.domain, self.checkers, store, timeout_base=self.timeout_base
            )
        return mach

    @property
    def rejected(self) -> int:
        return sum(mach.rejected for mach in self.machines.values())

    # inputs ---------------------------------------------------------------------

    async def start_job(
        self,
        spec: JobSpec,
        providers: Sequence[ProviderInfo],
        epoch: int,
        *,
        attempt: int = 0,
        first_round: int = 0,
    ) -> None:
        """An open job (JobCreated, JobReassigned, or found open after a restart)."""
        known = self.jobs.get(spec.job_id)
        if known is not None and known[0] >= attempt:
            return  # idempotent: events repeat after reorgs and restarts
        self._settled.discard(spec.job_id)
        if known is not None:
            self.machine(known[0]).forget(spec.job_id)
            self.decisions.pop(spec.job_id, None)
        mach = self.machine(attempt)
        if attempt > 0:
            self._carry_votes(spec.job_id, attempt, first_round)
        self.jobs[spec.job_id] = (attempt, first_round)
        out = mach.start_job(spec, providers, epoch, first_round)
        for item in self._buffer.pop(spec.job_id, []):
            if item.round < first_round:
                continue
            out += mach.on_vote(item) if isinstance(item, SignedAssignVote) else mach.on_qc(item)
        await self._carry(spec.job_id, out)

    def _carry_votes(self, job_id: int, attempt: int, first_round: int) -> None:
        """Copy own votes of earlier attempts in rounds >= first_round into this attempt's store."""
        target = self.machine(attempt).store
        assert target is not None
        for earlier in range(attempt):
            source = self.machine(earlier).store
            assert source is not None
            for v in source.assign_votes(job_id):
                if v.round >= first_round:
                    try:
                        target.record_assign_vote(job_id, v.round, v.provider, v.signature)
                    except VoteConflict:  # already carried: the earlier copy stands
                        pass

    async def on_gossip(self, env: wire.Envelope, peer: Any) -> None:
        if self._closed:
            return
        if env.type == "AssignVoteMsg":
            await self.on_vote(m.assign_vote_from(env))
        elif env.type == "AssignQCMsg":
            await self.on_qc(m.assign_qc_from(env))
        elif self.on_message is not None:
            await self.on_message(env)

    async def on_vote(self, vote: SignedAssignVote) -> None:
        mach = self._route(vote.job_id, vote.round, vote)
        if mach is not None:
            await self._carry(vote.job_id, mach.on_vote(vote))

    async def on_qc(self, qc: AssignQC) -> None:
        mach = self._route(qc.job_id, qc.round, qc)
        if mach is not None:
            await self._carry(qc.job_id, mach.on_qc(qc), qc_from_gossip=True)

    def _route(
        self, job_id: int, round_: int, item: SignedAssignVote | AssignQC
    ) -> _Machine | None:
        if job_id in self._settled:
            return None
        known = self.jobs.get(job_id)
        if known is None:
            items = self._buffer.setdefault(job_id, [])
            self._buffer.move_to_end(job_id)
            if len(items) < MAX_BUFFERED_PER_JOB:
                items.append(item)
            while len(self._buffer) > MAX_BUFFERED_JOBS:
                self._buffer.popitem(last=False)
            return None
        attempt, first_round = known
        if round_ < first_round:
            return None  # a round the chain has closed
        return self.machine(attempt)

    async def on_timeout(self, job_id: int, attempt: int, round_: int) -> None:
        if self.jobs.get(job_id, (None,))[0] != attempt:
            return
        mach = self.machine(attempt)
        job = mach.jobs.get(job_id)
        if job is not None and job.spec is not None and self.view is not None:
            providers, epoch = self.view(job.spec)
            mach.refresh_view(job_id, providers, epoch)
        await self._carry(job_id, mach.on_timeout(job_id, round_))

    def forget(self, job_id: int) -> None:
        """The job is settled on chain (assigned, closed, refunded): bound memory."""
        known = self.jobs.get(job_id)
        if known is not None:
            self.machine(known[0]).forget(job_id)
            self._settled.add(job_id)

    def decided(self, job_id: int) -> AssignQC | None:
        return self.decisions.get(job_id)

    # outputs ----------------------------------------------------------------------

    async def _carry(
        self, job_id: int, outputs: list[Output], *, qc_from_gossip: bool = False
    ) -> None:
        attempt = self.jobs.get(job_id, (0, 0))[0]
        for out in outputs:
            if isinstance(out, Broadcast):
                msg = out.message
                if isinstance(msg, SignedAssignVote):
                    if msg.signer == self.identity.address and job_id not in self.proposed_at:
                        self.proposed_at[job_id] = trio.current_time()
                    if msg.signer == self.identity.address:
                        _crash_after_sign(msg)
                    await self._publish("AssignVoteMsg", m.assign_vote_fields(msg))
                elif not qc_from_gossip:  # gossip already floods a QC we received
                    await self._publish("AssignQCMsg", m.assign_qc_fields(msg))
            elif isinstance(out, StartTimer):
                self._spawn(self._timer, out.job_id, attempt, out.round, out.seconds)
            elif isinstance(out, Decided):
                self.decisions[out.qc.job_id] = out.qc
                self.decided_at.setdefault(out.qc.job_id, trio.current_time())
                metrics.QCS.labels(metrics.label(self.host.address), "assign").inc()
                log.info(
                    "event=qc_formed job=%d round=%d provider=%s signers=%d",
                    out.qc.job_id,
                    out.qc.round,
                    out.qc.provider,
                    len(out.qc.signatures),
                )
                if self.on_decided is not None:
                    self._spawn(self._guarded, self.on_decided, out.qc)
            elif isinstance(out, Slash):
                log.warning("event=equivocation evidence=%s", out.evidence)
                if self.on_slash is not None:
                    self._spawn(self._guarded, self.on_slash, out.evidence)

    async def _publish(self, type_name: str, fields: dict) -> None:
        env = self.host.sign(type_name, fields)
        try:
            await self.host.publish(m.ASSIGN_TOPIC, env)
            self.published += 1
        except Exception as exc:  # no peers yet: the vote is durable, rounds resend
            log.warning("event=publish_failed type=%s err=%s", type_name, exc)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None, "engine not running"
        self._nursery.start_soon(fn, *args)

    async def _timer(self, job_id: int, attempt: int, round_: int, seconds: float) -> None:
        await trio.sleep(seconds)
        await self.on_timeout(job_id, attempt, round_)

    async def _guarded(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        try:
            await fn(arg)
        except Exception:
            log.exception("event=callback_failed fn=%s", getattr(fn, "__name__", fn))
