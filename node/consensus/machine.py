"""The assignment state machine: the rules of ``assignment`` with memory, and no I/O.

An engine (gossip, streams, timers, chain) is a thin loop around one
``AssignmentMachine``: feed it what arrives and carry out what it returns.

Inputs: ``start_job`` (JobCreated / JobReassigned / open after a restart),
``on_message`` (any of ``Proposal``, ``SignedPrevote``, ``PrepareQC``,
``SignedAssignVote``, ``AssignQC``), ``on_timeout`` / ``on_propose_timeout`` (when a
``StartTimer`` fires), ``refresh_view``, ``forget``.

Outputs:

- ``Broadcast(message)``: gossip a ``Proposal``, ``PrepareQC`` or ``AssignQC``;
- ``Send(to, message)``: deliver a ``SignedPrevote``, ``SignedAssignVote`` (precommit)
  or ``PrepareQC`` (at a round change) to checker ``to`` only, normally the leader;
- ``StartTimer(job_id, round, seconds, propose)``: call ``on_propose_timeout`` (if
  ``propose``) or ``on_timeout`` later;
- ``Decided(qc)``: the job has a valid QC: send it to the provider and the chain;
- ``Slash(evidence)``: a checker signed two AssignVotes in one round: submit it.

Every own signature is committed to the ``VoteStore`` before the output that carries it
is returned, so a crash between the two cannot lead to a conflicting vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from node.consensus import assignment as rules
from node.consensus.checkers import CheckerSet
from node.consensus.evidence import Evidence, EvidencePool
from node.consensus.qc import (
    AssignQC,
    InvalidVote,
    PrepareQC,
    Proposal,
    SignedAssignVote,
    SignedPrevote,
    build_assign_qc,
    build_prepare_qc,
    has_quorum,
    sign_assign_vote,
    sign_prevote,
    verify_assign_qc,
    verify_assign_vote,
    verify_prepare_qc,
    verify_prevote,
    verify_proposal,
)
from node.consensus.scheduler import JobSpec, ProviderInfo, choose_provider, is_eligible_provider
from node.consensus.store import VoteStore
from node.eip712 import Domain
from node.identity import Identity

Message = Proposal | SignedPrevote | PrepareQC | SignedAssignVote | AssignQC


@dataclass(frozen=True)
class Broadcast:
    message: Proposal | PrepareQC | AssignQC


@dataclass(frozen=True)
class Send:
    to: str  # checker address
    message: SignedPrevote | SignedAssignVote | PrepareQC


@dataclass(frozen=True)
class StartTimer:
    job_id: int
    round: int
    seconds: float
    propose: bool = False  # the leader's wait before proposing, not the round timeout


@dataclass(frozen=True)
class Decided:
    qc: AssignQC


@dataclass(frozen=True)
class Slash:
    evidence: Evidence


Output = Broadcast | Send | StartTimer | Decided | Slash


@dataclass
class JobState:
    spec: JobSpec | None = None
    providers: tuple[ProviderInfo, ...] = ()
    epoch: int = 0
    round: int = 0
    lock: rules.Lock = rules.NO_LOCK
    high_qc: PrepareQC | None = None  # the highest-round PrepareQC known (justify / NewView)
    proposals: dict[int, Proposal] = field(default_factory=dict)  # first valid one per round
    prepared: dict[int, PrepareQC] = field(default_factory=dict)  # round -> a PrepareQC
    # (round, provider) -> {signer: signature}, verified; prevotes only as that round's leader
    prevotes: dict[tuple[int, str], dict[str, bytes]] = field(default_factory=dict)
    precommits: dict[tuple[int, str], dict[str, bytes]] = field(default_factory=dict)
    qc: AssignQC | None = None
    heard: dict[str, int] = field(default_factory=dict)  # leader -> highest round it proposed in


class AssignmentMachine:
    """One checker's view of every job's assignment. Deterministic; no clocks, no sockets."""

    def __init__(
        self,
        identity: Identity,
        domain: Domain,
        checkers: CheckerSet,
        store: VoteStore | None = None,
        *,
        timeout_base: float = rules.ROUND_TIMEOUT_SECONDS,
    ) -> None:
        self.identity = identity
        self.address = identity.address
        self.domain = domain
        self.checkers = checkers
        self.store = store
        self.timeout_base = timeout_base
        self.jobs: dict[int, JobState] = {}
        self.evidence = EvidencePool()
        self.rejected = 0  # invalid messages dropped (metric)
        self.equivocating_proposals = 0  # a leader's second, different proposal (metric)

    # inputs -------------------------------------------------------------------

    def start_job(
        self,
        spec: JobSpec,
        providers: Sequence[ProviderInfo],
        epoch: int,
        first_round: int = 0,
    ) -> list[Output]:
        """An open job, with the provider view (as of its creation) to schedule over.

        ``first_round`` is the chain's round for a reopened job (rounds below it are
        closed). Idempotent. After a restart the lock comes from the store: the machine
        resumes at its last voted round and re-sends its latest precommit (same signature).
        """
        job = self._job(spec.job_id)
        if job.spec is not None:
            return []
        job.spec, job.providers, job.epoch = spec, tuple(providers), epoch
        if job.qc is not None:
            return []
        job.round = max(job.round, first_round, job.lock.last_round, 0)
        out = self._enter_round(spec.job_id, job)
        out += self._resend_own_precommit(spec.job_id, job)
        return out + self._skip_rounds(spec.job_id, job)  # proposals heard before the job

    def on_job(self, spec: JobSpec, providers: Sequence[ProviderInfo], epoch: int) -> list[Output]:
        """A JobCreated event (``start_job`` from round 0)."""
        return self.start_job(spec, providers, epoch)

    def refresh_view(self, job_id: int, providers: Sequence[ProviderInfo], epoch: int) -> None:
        """Newer provider table for an undecided job (used by later proposals)."""
        job = self.jobs.get(job_id)
        if job is not None and job.spec is not None and job.qc is None:
            job.providers, job.epoch = tuple(providers), epoch

    def on_message(self, msg: Message) -> list[Output]:
        if isinstance(msg, Proposal):
            return self.on_proposal(msg)
        if isinstance(msg, SignedPrevote):
            return self.on_prevote(msg)
        if isinstance(msg, PrepareQC):
            return self.on_prepare_qc(msg)
        if isinstance(msg, SignedAssignVote):
            return self.on_vote(msg)
        return self.on_qc(msg)

    def on_proposal(self, proposal: Proposal) -> list[Output]:
        """The leader's prevote (plus justification) for its round."""
        job_id, round_ = proposal.job_id, proposal.round
        try:
            # The proposal is signed by the leader of its (job, round)
            if not rules.is_proposal(self.checkers, job_id, round_, proposal.prevote.signer):
                raise InvalidVote("not the round's leader")
            verify_proposal(self.domain, self.checkers, proposal)
        except InvalidVote:
            self.rejected += 1
            return []
        job = self._job(job_id)
        out: list[Output] = []
        if proposal.justify is not None:
            out += self._learn_prepare(job_id, job, proposal.justify)
        signer = proposal.prevote.signer
        job.heard[signer] = max(job.heard.get(signer, -1), round_)
        known = job.proposals.get(round_)
        if known is not None:
            if known.provider != proposal.provider:
                self.equivocating_proposals += 1
            return out
        job.proposals[round_] = proposal
        if job.spec is None or job.qc is not None:
            return out
        out += self._skip_rounds(job_id, job)
        if round_ == job.round + 1 and self._signable(job, proposal):
            # Our round timer runs a little behind the leader's: catch up one round.
            out += self._advance(job_id, job, round_)
        return out + self._consider_proposal(job_id, job, round_)

    def on_prevote(self, vote: SignedPrevote) -> list[Output]:
        """A prevote sent to us; only the leader of its round collects them."""
        try:
            verify_prevote(self.domain, self.checkers, vote)
        except InvalidVote:
            self.rejected += 1
            return []
        if rules.get_leader(self.checkers, vote.job_id, vote.round) != self.address:
            return []
        return self._add_prevote(vote.job_id, self._job(vote.job_id), vote)

    def on_prepare_qc(self, qc: PrepareQC) -> list[Output]:
        """A polka (gossiped by a leader, or sent to us as the next leader)."""
        job = self._job(qc.job_id)
        if job.prepared.get(qc.round) == qc:
            return []
        try:
            verify_prepare_qc(self.domain, self.checkers, qc)
        except (InvalidVote, ValueError):
            self.rejected += 1
            return []
        return self._learn_prepare(qc.job_id, job, qc)

    def on_vote(self, vote: SignedAssignVote) -> list[Output]:
        """A precommit (the on-chain AssignVote) sent to us."""
        try:
            verify_assign_vote(self.domain, self.checkers, vote)
        except InvalidVote:
            self.rejected += 1
            return []
        return self._add_precommit(vote.job_id, self._job(vote.job_id), vote)

    def on_qc(self, qc: AssignQC) -> list[Output]:
        job = self._job(qc.job_id)
        if job.qc is not None:
            return []
        try:
            verify_assign_qc(self.domain, self.checkers, qc)
        except (InvalidVote, ValueError):
            self.rejected += 1
            return []
        return self._decide(qc.job_id, job, qc)

    def on_timeout(self, job_id: int, round_: int) -> list[Output]:
        """Round ``round_`` of ``job_id`` ended without a QC: move to the next leader,
        handing it our highest PrepareQC (the "new view") so it can justify its proposal."""
        job = self.jobs.get(job_id)
        if job is None or job.spec is None or job.qc is not None or round_ != job.round:
            return []
        out: list[Output] = []
        next_leader = rules.get_leader(self.checkers, job_id, round_ + 1)
        if job.high_qc is not None and next_leader != self.address:
            out.append(Send(next_leader, job.high_qc))
        return out + self._advance(job_id, job, round_ + 1)

    def on_propose_timeout(self, job_id: int, round_: int) -> list[Output]:
        """The leader's wait for new views of ``round_`` is over: propose."""
        job = self.jobs.get(job_id)
        if job is None or job.spec is None or job.qc is not None or round_ != job.round:
            return []
        return self._propose(job_id, job)

    def forget(self, job_id: int) -> None:
        """Drop a finished job's in-memory state (assigned on chain, closed or refunded).

        The store keeps the lock, so a late vote for the job can never be signed again
        differently. Engines call this to bound memory.
        """
        self.jobs.pop(job_id, None)
        self.evidence.forget_job(job_id)

    def decided(self, job_id: int) -> AssignQC | None:
        job = self.jobs.get(job_id)
        return job.qc if job else None

    # internals ----------------------------------------------------------------

    def _job(self, job_id: int) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState()
            if self.store is not None:
                job.lock = self.store.assign_lock(job_id)
        return job

    def _leader(self, job_id: int, round_: int) -> str:
        return rules.get_leader(self.checkers, job_id, round_)

    def _skip_rounds(self, job_id: int, job: JobState) -> list[Output]:
        """Tendermint's round skip: leaders holding > 1/3 of stake proposed in rounds >= R,
        so some honest checker is in round R already: move there (then one round more if
        that round's stored proposal may be prevoted, as on arrival). Without it a checker
        that fell behind (restarted, paused) stayed behind for good: round timeouts run at
        the same pace everywhere once capped, and only a proposal for exactly the next
        round pulled it forward; two such checkers of four left no quorum. Byzantine
        leaders (< 1/3 of stake) cannot pull anyone past every honest checker's round."""
        if job.spec is None or job.qc is not None:
            return []
        stake, target = 0, -1
        for signer, heard in sorted(job.heard.items(), key=lambda kv: -kv[1]):
            stake += self.checkers.stake_of(signer)
            if 3 * stake > self.checkers.total_stake:
                target = heard
                break
        if target <= job.round:
            return []
        out = self._advance(job_id, job, target)
        following = job.proposals.get(job.round + 1)
        if following is not None and self._signable(job, following):
            out += self._advance(job_id, job, job.round + 1)
        return out

    def _advance(self, job_id: int, job: JobState, round_: int) -> list[Output]:
        job.round = round_
        return self._enter_round(job_id, job)

    def _enter_round(self, job_id: int, job: JobState) -> list[Output]:
        r = job.round
        out: list[Output] = [StartTimer(job_id, r, rules.round_timeout(r, self.timeout_base))]
        if self._leader(job_id, r) == self.address:
            wait = rules.propose_wait(r, self.timeout_base)
            if wait > 0:
                out.append(StartTimer(job_id, r, wait, propose=True))
            else:
                out += self._propose(job_id, job)
        else:
            out += self._consider_proposal(job_id, job, r)
        prepared = job.prepared.get(r)
        if prepared is not None:
            out += self._precommit(job_id, job, prepared)
        return out

    def _propose(self, job_id: int, job: JobState) -> list[Output]:
        assert job.spec is not None
        r = job.round
        high = job.high_qc if job.high_qc is not None and job.high_qc.round < r else None
        scheduled = choose_provider(job.spec, job.providers, job.epoch)
        provider = rules.proposal_for(high.provider if high else None, scheduled)
        if provider is None:
            return []
        vote = self._sign_prevote(job_id, job, r, provider, high)
        if vote is None:
            return []
        proposal = Proposal(vote, high)
        job.proposals.setdefault(r, proposal)
        return [Broadcast(proposal), *self._add_prevote(job_id, job, vote)]

    def _signable(self, job: JobState, proposal: Proposal) -> bool:
        """The prevote rule, plus: the provider is eligible in our view or justified."""
        j = proposal.justify
        if j is None and not self._eligible(job, proposal.provider):
            return False
        return rules.may_prevote(
            job.lock, proposal.round, proposal.provider, j.round if j else None
        )

    def _consider_proposal(self, job_id: int, job: JobState, round_: int) -> list[Output]:
        """Prevote the leader's proposal for ``round_`` if the rules allow it."""
        proposal = job.proposals.get(round_)
        if proposal is None or job.spec is None or job.qc is not None or round_ != job.round:
            return []
        if not self._signable(job, proposal):
            return []
        vote = self._sign_prevote(job_id, job, round_, proposal.provider, proposal.justify)
        if vote is None:
            return []
        return self._send(job_id, job, self._leader(job_id, round_), vote)

    def _eligible(self, job: JobState, provider: str) -> bool:
        """Eligible in this checker's view. (A justified provider needs no such check: it
        had prevotes of >= 2/3 of stake, so some honest checker found it eligible.)"""
        assert job.spec is not None
        known = [p for p in job.providers if p.address == provider]
        return bool(known) and is_eligible_provider(job.spec, known[0], job.epoch)

    def _sign_prevote(
        self, job_id: int, job: JobState, round_: int, provider: str, justify: PrepareQC | None
    ) -> SignedPrevote | None:
        if not rules.may_prevote(job.lock, round_, provider, justify.round if justify else None):
            return None
        vote = sign_prevote(self.identity, self.domain, job_id, round_, provider)
        if self.store is not None:  # durable BEFORE the signature leaves the machine
            self.store.record_assign_prevote(job_id, round_, provider, vote.signature)
        job.lock = rules.record_prevote(job.lock, round_)
        return vote

    def _add_prevote(self, job_id: int, job: JobState, vote: SignedPrevote) -> list[Output]:
        signers = job.prevotes.setdefault((vote.round, vote.provider), {})
        if vote.signer in signers:
            return []
        signers[vote.signer] = vote.signature
        if vote.round in job.prepared or job.qc is not None:
            return []
        if not has_quorum(self.checkers.stake_of_all(signers), self.checkers.total_stake):
            return []
        qc = build_prepare_qc(
            self.domain, self.checkers, job_id, vote.round, vote.provider, signers
        )
        if qc is None:
            return []
        return [Broadcast(qc), *self._learn_prepare(job_id, job, qc)]

    def _learn_prepare(self, job_id: int, job: JobState, qc: PrepareQC) -> list[Output]:
        job.high_qc = rules.higher_justify(job.high_qc, qc)
        job.prepared.setdefault(qc.round, qc)
        if job.spec is None or job.qc is not None:
            return []
        out: list[Output] = []
        if qc.round > job.round:  # >= 2/3 of stake prevoted there: catch up
            out += self._advance(job_id, job, qc.round)
            return out  # entering the round precommits on the known PrepareQC
        if qc.round == job.round:
            out += self._precommit(job_id, job, qc)
        return out

    def _precommit(self, job_id: int, job: JobState, qc: PrepareQC) -> list[Output]:
        if not rules.may_precommit(job.lock, qc.round):
            return []
        vote = sign_assign_vote(self.identity, self.domain, job_id, qc.round, qc.provider)
        if self.store is not None:  # durable BEFORE the signature leaves the machine
            self.store.record_assign_vote(job_id, qc.round, qc.provider, vote.signature)
        job.lock = rules.record_precommit(job.lock, qc.round, qc.provider)
        return self._send(job_id, job, self._leader(job_id, qc.round), vote)

    def _send(
        self, job_id: int, job: JobState, to: str, vote: SignedPrevote | SignedAssignVote
    ) -> list[Output]:
        if to != self.address:
            return [Send(to, vote)]
        if isinstance(vote, SignedPrevote):
            return self._add_prevote(job_id, job, vote)
        return self._add_precommit(job_id, job, vote)

    def _resend_own_precommit(self, job_id: int, job: JobState) -> list[Output]:
        """After a restart, re-send the latest stored precommit (same signature: not a new vote)."""
        if self.store is None or job.lock.provider is None:
            return []
        latest = self.store.assign_votes(job_id)[-1]
        vote = SignedAssignVote(
            job_id, latest.round, latest.provider, self.address, latest.signature
        )
        return self._send(job_id, job, self._leader(job_id, latest.round), vote)

    def _add_precommit(self, job_id: int, job: JobState, vote: SignedAssignVote) -> list[Output]:
        signers = job.precommits.setdefault((vote.round, vote.provider), {})
        if vote.signer in signers:
            return []
        signers[vote.signer] = vote.signature
        out: list[Output] = []
        evidence = self.evidence.add_assign(vote)
        if evidence is not None:
            out.append(Slash(evidence))
        if job.qc is not None:
            return out
        if has_quorum(self.checkers.stake_of_all(signers), self.checkers.total_stake):
            qc = build_assign_qc(
                self.domain, self.checkers, job_id, vote.round, vote.provider, signers
            )
            if qc is not None:
                out += self._decide(job_id, job, qc)
        return out

    def _decide(self, job_id: int, job: JobState, qc: AssignQC) -> list[Output]:
        job.qc = qc
        job.lock = rules.record_qc_seen(job.lock)
        if self.store is not None:
            self.store.record_assign_qc_seen(job_id, qc.provider)
        return [Broadcast(qc), Decided(qc)]
