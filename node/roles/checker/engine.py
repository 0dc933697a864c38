"""The assignment engine: ``AssignmentMachine`` wired to gossip, direct streams and timers.

``AssignmentEngine(host, identity, domain, checkers, data_dir, ...)`` owns the machines
and their SQLite vote stores in ``data_dir``. ``await nursery.start(engine.run)``
subscribes to ``assign/1`` and serves ``/kaisar/vote/1``; then ``await
engine.start_job(spec, providers, epoch)`` for each job the chain says is open. The
engine carries out what the machine returns:

- ``Broadcast``: publish the proposal / PrepareQC / AssignQC on ``assign/1``.
- ``Send``: a vote (or a new-view PrepareQC) to one checker, normally the round leader:
  a signed envelope on a long-lived ``/kaisar/vote/1`` stream to that peer, one
  ordered outbox per peer (a task, so the machine's caller never waits on a dial).
  If the checker's peer is not connected, the envelope is gossiped instead (every
  checker receives it; only the addressee uses it). The machine commits its own vote
  to the store (fsync) *before* returning it, so a crash here can lose a message, never
  produce a conflicting one; after a restart ``start_job`` re-sends the stored
  precommit with the same signature.
- ``StartTimer``: a task in the engine's nursery calls ``on_timeout`` (or, for the
  leader's wait, ``on_propose_timeout``) later, after refreshing the job's provider
  view (``view(spec)``), so a job that arrived before any provider was verified is
  proposed with what is known then. The view is refreshed before each proposal is
  fed to the machine as well (a restarted checker started its jobs before any ad came).
- ``Decided``: ``on_decided(qc)`` runs as a task (deploy + chain submission).

Round log. Each round of a job that ends without a QC is logged once
(``event=assign_round job round leader outcome reason providers``) and counted per job
(``round_summary``): ``no_quorum`` (a proposal was seen, no QC in time: checkers faulted,
slow, or finding the provider ineligible), ``leader_timeout`` (no proposal came although
this checker's view had an eligible provider: the leader is down or slow), or, when this
checker's own view has no eligible provider, its nearest miss (``explain(spec)``:
``no_capacity``, ``no_standing``, ``price``, ``class``, ``not_accepting``, ``stale_ad``,
``no_ad``; docs/CHECKER.md). The checker logs the counts when a job expires unassigned.
- ``Slash``: ``on_slash(evidence)`` (if given).

Reassignment. The chain reopens a failed job at ``round + 1`` (``JobReassigned``) but
the machine's lock for the job ("a QC was seen: sign nothing else") is for ever. A new
*attempt* therefore gets its own machine and store (``votes.sqlite`` for attempt 0,
``votes.a<k>.sqlite`` after the k-th failure). Before the first vote of attempt k, every
own vote of earlier attempts (precommits and prevotes) in rounds >= the reopened round is
copied into the new store, so the vote rules still see them: a checker never signs two
providers for one (job, round) and vote kind, across attempts and restarts. Rounds below
the reopened one are closed by the contract (``round >= job.round``) and never signed
again.

Messages for a job the engine has not started yet are buffered (bounded) and replayed
into the machine when the job starts.

Error rules: a message that fails validation is dropped by the machine (``rejected``);
a direct stream that breaks is reopened once per message, then the message goes by
gossip; ``on_decided`` / ``on_slash`` exceptions are logged, never kill the engine; a
failed publish (no peers) is logged, and the timers re-send nothing: the next round
makes up for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from node import metrics, wire
from node.consensus import assignment as rules
from node.consensus.checkers import CheckerSet
from node.consensus.evidence import Evidence
from node.consensus.machine import (
    AssignmentMachine,
    Broadcast,
    Decided,
    Message,
    Output,
    Send,
    Slash,
    StartTimer,
)
from node.consensus.qc import AssignQC, Proposal, SignedAssignVote
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.store import VoteConflict, VoteStore
from node.eip712 import Domain
from node.identity import Identity, peer_id_to_address
from node.p2p.frames import FramedStream, FrameError
from node.roles.checker import messages as m

log = logging.getLogger("kaisar.checker.engine")

MAX_BUFFERED_JOBS = 10_000
MAX_BUFFERED_PER_JOB = 1024
STORE_FILE = "votes.sqlite"
OUTBOX_SIZE = 1024  # queued direct messages per peer; beyond it they go by gossip
DIRECT_OPEN_TIMEOUT = 5.0
DIRECT_SEND_TIMEOUT = 5.0
DIRECT_IDLE_TIMEOUT = 24 * 3600.0  # a vote stream stays open while the connection does
MAX_DIRECT_FRAME = 64 * 1024
UNREACHABLE_SECONDS = 30.0  # after a failed dial, use gossip for that checker this long

View = Callable[[JobSpec], tuple[Sequence[ProviderInfo], int]]
# (round reason, provider -> miss) of this checker's view; see CheckerService.explain
Explain = Callable[[JobSpec], tuple[str, dict[str, str]]]

# Test-only fault injection, off unless the variable names a marker file: the process
# exits right after its first own precommit (the on-chain AssignVote) was signed (and
# persisted by the machine) and before it is sent to the leader, writing the vote to the
# marker (tests/test_restart_checker.py). A leader's own precommit is never sent, so the
# hook fires in a round the checker does not lead.
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
        explain: Explain | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.domain = domain
        self.checkers = checkers
        self.data_dir = Path(data_dir)
        self.timeout_base = timeout_base
        self.on_decided = on_decided
        self.on_slash = on_slash
        self.on_message_hook = on_message  # other envelope types on assign/1 (FailureVoteMsg)
        self.view = view
        self.explain = explain
        self._round_reasons: dict[int, Counter[str]] = {}  # job -> reason -> rounds without a QC
        self.machines: dict[int, AssignmentMachine] = {}
        self.jobs: dict[int, tuple[int, int]] = {}  # job -> (attempt, first round)
        self.decisions: dict[int, AssignQC] = {}
        self._buffer: OrderedDict[int, list[Message]] = OrderedDict()
        self._peers: dict[str, Any] = {}  # checker address -> peer ID (learned)
        self._scanned: set[Any] = set()  # connected peers already mapped to an address
        self._outboxes: dict[Any, trio.MemorySendChannel] = {}
        self._unreachable: dict[Any, float] = {}  # peer -> trio time of the next try
        self._direct_replay = wire.ReplayGuard()
        self._nursery: trio.Nursery | None = None
        self._settled: set[int] = set()  # forgotten jobs: late messages are dropped
        self._closed = False
        self.published = 0  # messages this engine published on assign/1 (bench metric)
        self.sent_direct = 0  # envelopes written to direct vote streams (bench metric)
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
                if hasattr(self.host, "set_handler"):
                    self.host.set_handler(m.VOTE_PROTOCOL, self._serve_direct)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._closed = True  # the host may outlive us: later gossip is ignored
            for mach in self.machines.values():
                if mach.store is not None:
                    mach.store.close()

    def machine(self, attempt: int) -> AssignmentMachine:
        mach = self.machines.get(attempt)
        if mach is None:
            store = VoteStore.open(store_path(self.data_dir, attempt))
            mach = self.machines[attempt] = AssignmentMachine(
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
        if self._closed:  # stopping: the stores are closed; the job is found again on restart
            return
        known = self.jobs.get(spec.job_id)
        if known is not None and known[0] >= attempt:
            return  # idempotent: events repeat after reorgs and restarts
        self._settled.discard(spec.job_id)
        self.jobs[spec.job_id] = (attempt, first_round)
        if known is not None:
            self.decisions.pop(spec.job_id, None)
        buffered = [i for i in self._buffer.pop(spec.job_id, []) if i.round >= first_round]
        if known is not None:
            self.machine(known[0]).forget(spec.job_id)
        mach = self.machine(attempt)
        if attempt > 0:
            self._carry_votes(spec.job_id, attempt, first_round)
        out = mach.start_job(spec, providers, epoch, first_round)
        for item in buffered:
            out += mach.on_message(item)
        await self._carry(spec.job_id, out)

    def _carry_votes(self, job_id: int, attempt: int, first_round: int) -> None:
        """Copy own precommits *and prevotes* of earlier attempts in rounds >= first_round
        into this attempt's store: one vote of each kind per (job, round), across attempts
        (rule 2 of docs/CONSENSUS.md; a prevote left behind let a checker prevote another
        provider in the same round of the reopened job)."""
        target = self.machine(attempt).store
        assert target is not None
        for earlier in range(attempt):
            source = self.machine(earlier).store
            assert source is not None
            for stored, record in (
                (source.assign_votes(job_id), target.record_assign_vote),
                (source.assign_prevotes(job_id), target.record_assign_prevote),
            ):
                for v in stored:
                    if v.round >= first_round:
                        try:
                            record(job_id, v.round, v.provider, v.signature)
                        except VoteConflict:  # already carried: the earlier copy stands
                            pass

    async def on_gossip(self, env: wire.Envelope, peer: Any) -> None:
        if self._closed:
            return
        if env.type in m.ASSIGN_TYPES:
            self._peers.setdefault(env.signer, peer)
            await self.on_message(m.assignment_from(env))
        elif self.on_message_hook is not None:
            await self.on_message_hook(env)

    async def on_message(self, msg: Message) -> None:
        """Any assignment message, from gossip or a direct stream (or a test)."""
        mach = self._route(msg.job_id, msg.round, msg)
        if mach is not None:
            if isinstance(msg, Proposal):
                # eligibility is judged on a fresh view: a checker restarted before any
                # ad arrived started the job with none, and a proposal may move it rounds ahead
                self._refresh_view(mach, msg.job_id)
            gossiped = isinstance(msg, AssignQC)  # gossip already floods a QC we received
            await self._carry(msg.job_id, mach.on_message(msg), qc_from_gossip=gossiped)

    async def on_vote(self, vote: Any) -> None:  # kept for callers of the one-step engine
        await self.on_message(vote)

    async def on_qc(self, qc: AssignQC) -> None:
        await self.on_message(qc)

    def _route(self, job_id: int, round_: int, item: Message) -> AssignmentMachine | None:
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

    async def on_timeout(
        self, job_id: int, attempt: int, round_: int, *, propose: bool = False
    ) -> None:
        if self.jobs.get(job_id, (None,))[0] != attempt:
            return
        mach = self.machine(attempt)
        self._refresh_view(mach, job_id)
        if not propose:
            self._note_round_end(mach, job_id, round_)
        fire = mach.on_propose_timeout if propose else mach.on_timeout
        await self._carry(job_id, fire(job_id, round_))

    def _refresh_view(self, mach: AssignmentMachine, job_id: int) -> None:
        job = mach.jobs.get(job_id)
        if job is not None and job.spec is not None and job.qc is None and self.view is not None:
            providers, epoch = self.view(job.spec)
            mach.refresh_view(job_id, providers, epoch)

    def _note_round_end(self, mach: AssignmentMachine, job_id: int, round_: int) -> None:
        """Round ``round_`` of an undecided job timed out: log and count why."""
        job = mach.jobs.get(job_id)
        if job is None or job.spec is None or job.qc is not None or job.round != round_:
            return
        leader = rules.get_leader(self.checkers, job_id, round_)
        proposal = job.proposals.get(round_)
        view, misses = self.explain(job.spec) if self.explain is not None else ("eligible", {})
        if proposal is not None:
            reason = "no_quorum"
        elif view != "eligible":
            reason = view
        elif leader != self.identity.address:
            reason = "leader_timeout"
        else:  # we lead and had someone eligible only after the proposal was due
            reason = "not_proposed"
        tally = self._round_reasons.setdefault(job_id, Counter())
        tally[reason] += 1
        log.info(
            "event=assign_round job=%d round=%d leader=%s reason=%s proposed=%s providers=%s",
            job_id, round_, leader, reason, proposal.provider if proposal else "-",
            ",".join(f"{a[:10]}:{w}" for a, w in sorted(misses.items())) or "-",
        )  # fmt: skip

    def round_summary(self, job_id: int) -> tuple[int, dict[str, int]]:
        """Rounds of ``job_id`` that ended without a QC (since this process started or
        the job was last reopened), and how many had each reason."""
        tally = self._round_reasons.get(job_id, Counter())
        return sum(tally.values()), dict(tally)

    def forget(self, job_id: int) -> None:
        """The job is settled on chain (assigned, closed, refunded): bound memory."""
        self._round_reasons.pop(job_id, None)
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
                if isinstance(msg, Proposal) and job_id not in self.proposed_at:
                    self.proposed_at[job_id] = trio.current_time()
                if isinstance(msg, AssignQC):
                    if not qc_from_gossip:
                        self._crash_hook_own_qc(attempt, msg)  # test-only, off unless set
                    if not qc_from_gossip:  # gossip already floods a QC we received
                        await self._publish(*m.assignment_fields(msg))  # for observers too
                else:
                    self._send_to_checkers(msg)
            elif isinstance(out, Send):
                if isinstance(out.message, SignedAssignVote):
                    _crash_after_sign(out.message)  # test-only hook, off unless set
                self._send(out.to, out.message)
            elif isinstance(out, StartTimer):
                self._spawn(self._timer, out.job_id, attempt, out.round, out.seconds, out.propose)
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

    def _crash_hook_own_qc(self, attempt: int, qc: AssignQC) -> None:
        """A leader's own precommit is never sent: the crash hook fires before the QC
        holding it leaves the process (with one checker, that is every vote)."""
        if not os.environ.get(CRASH_AFTER_SIGN_ENV):
            return
        store = self.machine(attempt).store
        for v in store.assign_votes(qc.job_id) if store is not None else []:
            if (v.round, v.provider) == (qc.round, qc.provider):
                own = SignedAssignVote(
                    qc.job_id, v.round, v.provider, self.identity.address, v.signature
                )
                _crash_after_sign(own)

    # direct votes ---------------------------------------------------------------------

    def _peer_of(self, address: str) -> Any:
        """The connected peer whose node key is ``address``, or None."""
        peer = self._peers.get(address)
        if peer is None and hasattr(self.host, "connected_peers"):
            for p in self.host.connected_peers():
                if p in self._scanned:
                    continue
                self._scanned.add(p)
                try:
                    self._peers.setdefault(peer_id_to_address(p), p)
                except Exception:  # a peer ID without an inlined secp256k1 key
                    continue
            peer = self._peers.get(address)
        if peer is not None and self._unreachable.get(peer, 0.0) > trio.current_time():
            return None
        return peer

    def _send_to_checkers(self, msg: Message) -> None:
        """A proposal or PrepareQC to every other checker: direct where connected (no
        gossip relaying, linear in n), one gossip publish for the rest."""
        env = self.host.sign(*m.assignment_fields(msg))
        missing = False
        for address in self.checkers.addresses:
            if address == self.identity.address:
                continue
            peer = self._peer_of(address)
            if peer is None or not self._enqueue(peer, env):
                missing = True
        if missing:
            self._spawn(self._publish_env, env)

    def _send(self, to: str, msg: Message) -> None:
        """Queue ``msg`` for checker ``to`` (never waits); gossip if it has no stream."""
        env = self.host.sign(*m.assignment_fields(msg))
        peer = self._peer_of(to)
        if peer is None or not self._enqueue(peer, env):
            self._spawn(self._publish_env, env)

    def _enqueue(self, peer: Any, env: wire.Envelope) -> bool:
        box = self._outboxes.get(peer)
        if box is None:
            box, inbox = trio.open_memory_channel[wire.Envelope](OUTBOX_SIZE)
            self._outboxes[peer] = box
            self._spawn(self._pump, peer, inbox)
        try:
            box.send_nowait(env)
        except trio.WouldBlock:
            return False
        return True

    async def _pump(self, peer: Any, inbox: trio.MemoryReceiveChannel) -> None:
        """One long-lived vote stream to ``peer``, in order; reopened once on failure."""
        stream: FramedStream | None = None
        try:
            async for env in inbox:
                sent = False
                for _attempt in range(2):
                    if self._unreachable.get(peer, 0.0) > trio.current_time():
                        break
                    try:
                        if stream is None:
                            stream = await self._open_direct(peer)
                        await stream.send(env.to_bytes(), timeout=DIRECT_SEND_TIMEOUT)
                        self.sent_direct += 1
                        sent = True
                        break
                    except Exception as exc:
                        log.info("event=direct_send_failed peer=%s err=%s", peer, exc)
                        if stream is None:  # could not even open one: stop trying a while
                            self._unreachable[peer] = trio.current_time() + UNREACHABLE_SECONDS
                        else:
                            await _close_quietly(stream)
                            stream = None
                if not sent:
                    await self._publish_env(env)  # no stream to it: gossip reaches it
        finally:
            self._outboxes.pop(peer, None)
            if stream is not None:
                await _close_quietly(stream)

    async def _open_direct(self, peer: Any) -> FramedStream:
        with trio.fail_after(DIRECT_OPEN_TIMEOUT):
            # A checker learned from gossip may be several hops away: dial it (DHT lookup)
            await self.host.ensure_connected(peer)
            raw = await self.host.host.new_stream(peer, [m.VOTE_PROTOCOL])
        return FramedStream(raw)

    async def _serve_direct(self, framed: FramedStream, peer: Any) -> None:
        """Envelopes from one peer's vote stream, until it closes. Each must be signed by
        that peer's key and pass the wire rules; anything else ends the stream."""
        try:
            sender = peer_id_to_address(peer)
        except Exception:
            return
        while not self._closed:
            try:
                data = await framed.recv(max_size=MAX_DIRECT_FRAME, timeout=DIRECT_IDLE_TIMEOUT)
                env = wire.decode(
                    data,
                    domain=self.host.domain,
                    network=self.host.network,
                    replay=self._direct_replay,
                    allowed_types=m.DIRECT_TYPES,
                )
            except FrameError:
                return  # closed, idle or not a frame
            except wire.WireError as exc:
                log.info("event=direct_rejected peer=%s reason=%s", peer, exc.reason)
                return
            if env.signer != sender:
                log.info("event=direct_rejected peer=%s reason=signer", peer)
                return
            self._peers.setdefault(sender, peer)
            await self.on_message(m.assignment_from(env))

    async def _publish(self, type_name: str, fields: dict) -> None:
        await self._publish_env(self.host.sign(type_name, fields))

    async def _publish_env(self, env: wire.Envelope) -> None:
        try:
            await self.host.publish(m.ASSIGN_TOPIC, env)
            self.published += 1
        except Exception as exc:  # no peers yet: the vote is durable, rounds resend
            log.warning("event=publish_failed type=%s err=%s", env.type, exc)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None, "engine not running"
        self._nursery.start_soon(fn, *args)

    async def _timer(
        self, job_id: int, attempt: int, round_: int, seconds: float, propose: bool
    ) -> None:
        await trio.sleep(seconds)
        await self.on_timeout(job_id, attempt, round_, propose=propose)

    async def _guarded(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        try:
            await fn(arg)
        except Exception:
            log.exception("event=callback_failed fn=%s", getattr(fn, "__name__", fn))


async def _close_quietly(stream: FramedStream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:  # already reset by the peer
            pass
