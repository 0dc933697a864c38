"""The assignment state machine: the rules of ``assignment`` with memory, and no I/O.

An engine (gossip, timers, chain) is a thin loop around one ``AssignmentMachine``:
feed it what arrives (``on_job``, ``on_vote``, ``on_qc``, ``on_timeout``) and carry out
what it returns:

- ``Broadcast(message)``: gossip a ``SignedAssignVote`` or ``AssignQC`` on ``assign/1``;
- ``StartTimer(job_id, round, seconds)``: call ``on_timeout(job_id, round)`` later;
- ``Decided(qc)``: the job has a valid QC: send it to the provider and the chain;
- ``Slash(evidence)``: a checker equivocated: submit the evidence.

Every own signature is committed to the ``VoteStore`` before the ``Broadcast`` that
carries it is returned, so a crash between the two cannot lead to a conflicting vote.
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
    SignedAssignVote,
    build_assign_qc,
    has_quorum,
    sign_assign_vote,
    verify_assign_qc,
    verify_assign_vote,
)
from node.consensus.scheduler import JobSpec, ProviderInfo, choose_provider, is_eligible_provider
from node.consensus.store import VoteStore
from node.eip712 import Domain
from node.identity import Identity


@dataclass(frozen=True)
class Broadcast:
    message: SignedAssignVote | AssignQC


@dataclass(frozen=True)
class StartTimer:
    job_id: int
    round: int
    seconds: float


@dataclass(frozen=True)
class Decided:
    qc: AssignQC


@dataclass(frozen=True)
class Slash:
    evidence: Evidence


Output = Broadcast | StartTimer | Decided | Slash


@dataclass
class JobState:
    spec: JobSpec | None = None
    providers: tuple[ProviderInfo, ...] = ()
    epoch: int = 0
    round: int = 0
    lock: rules.Lock = rules.NO_LOCK
    # (round, provider) -> {signer: signature}: every verified vote
    tally: dict[tuple[int, str], dict[str, bytes]] = field(default_factory=dict)
    # round -> signer -> providers signed (for the lock-release rule)
    round_votes: dict[int, dict[str, set[str]]] = field(default_factory=dict)
    proposals: dict[int, SignedAssignVote] = field(default_factory=dict)
    qc: AssignQC | None = None


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

    # inputs -------------------------------------------------------------------

    def on_job(self, spec: JobSpec, providers: Sequence[ProviderInfo], epoch: int) -> list[Output]:
        """A JobCreated event, with the provider view (as of the job's creation) to schedule over."""
        job = self._job(spec.job_id)
        if job.spec is not None:
            return []
        job.spec, job.providers, job.epoch = spec, tuple(providers), epoch
        if job.qc is not None:
            return []
        job.round = max(job.round, job.lock.round, 0)
        out = self._enter_round(spec.job_id, job)
        out += self._rebroadcast_own_vote(spec.job_id, job)
        return out

    def on_vote(self, vote: SignedAssignVote) -> list[Output]:
        """A gossiped vote (a leader's vote is also its proposal)."""
        try:
            verify_assign_vote(self.domain, self.checkers, vote)
        except InvalidVote:
            self.rejected += 1
            return []
        return self._add_vote(vote)

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
        """Round ``round_`` of ``job_id`` ended without a QC: move to the next leader."""
        job = self.jobs.get(job_id)
        if job is None or job.spec is None or job.qc is not None or round_ != job.round:
            return []
        job.round = round_ + 1
        return self._enter_round(job_id, job)

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

    def _enter_round(self, job_id: int, job: JobState) -> list[Output]:
        out: list[Output] = [
            StartTimer(job_id, job.round, rules.round_timeout(job.round, self.timeout_base))
        ]
        if rules.get_leader(self.checkers, job_id, job.round) == self.address:
            out += self._propose(job_id, job)
        else:
            out += self._consider(job_id, job, job.round)
        return out

    def _released(self, job: JobState) -> bool:
        return rules.is_lock_released(job.lock, job.round_votes, self.checkers)

    def _propose(self, job_id: int, job: JobState) -> list[Output]:
        assert job.spec is not None
        scheduled = choose_provider(job.spec, job.providers, job.epoch)
        adopted = rules.adopted_provider(job.round_votes, self.checkers, job_id)
        if adopted is not None and not self._acceptable(job, adopted):
            adopted = None
        provider = rules.proposal_for(job.lock, self._released(job), scheduled, adopted)
        if provider is None:
            return []
        return self._sign(job_id, job, job.round, provider)

    def _consider(self, job_id: int, job: JobState, round_: int) -> list[Output]:
        """Sign the leader's proposal for ``round_`` if the vote rule allows it."""
        proposal = job.proposals.get(round_)
        if proposal is None or job.spec is None or job.qc is not None or round_ < job.round:
            return []
        provider = proposal.provider
        eligible = provider == job.lock.provider or self._acceptable(job, provider)
        if not eligible:
            return []
        if not rules.may_sign_assignment(job.lock, round_, provider, self._released(job)):
            return []
        out: list[Output] = []
        if round_ > job.round:  # a valid proposal from a later round: catch up
            job.round = round_
            out.append(StartTimer(job_id, round_, rules.round_timeout(round_, self.timeout_base)))
        return out + self._sign(job_id, job, round_, provider)

    def _acceptable(self, job: JobState, provider: str) -> bool:
        """Eligible in this checker's view, or vouched for by >= 1/3 of stake."""
        assert job.spec is not None
        known = [p for p in job.providers if p.address == provider]
        if known and is_eligible_provider(job.spec, known[0], job.epoch):
            return True
        return rules.is_vouched(provider, job.round_votes, self.checkers)

    def _sign(self, job_id: int, job: JobState, round_: int, provider: str) -> list[Output]:
        if not rules.may_sign_assignment(job.lock, round_, provider, self._released(job)):
            return []
        vote = sign_assign_vote(self.identity, self.domain, job_id, round_, provider)
        if self.store is not None:  # durable BEFORE the signature leaves the machine
            self.store.record_assign_vote(job_id, round_, provider, vote.signature)
        job.lock = rules.record_own_vote(job.lock, round_, provider)
        return [Broadcast(vote), *self._add_vote(vote)]

    def _rebroadcast_own_vote(self, job_id: int, job: JobState) -> list[Output]:
        """After a restart, re-send the latest stored vote (same signature: not a new vote)."""
        if self.store is None or job.lock.provider is None:
            return []
        latest = self.store.assign_votes(job_id)[-1]
        vote = SignedAssignVote(
            job_id, latest.round, latest.provider, self.address, latest.signature
        )
        return [Broadcast(vote), *self._add_vote(vote)]

    def _add_vote(self, vote: SignedAssignVote) -> list[Output]:
        job = self._job(vote.job_id)
        signers = job.tally.setdefault((vote.round, vote.provider), {})
        if vote.signer in signers:
            return []
        signers[vote.signer] = vote.signature
        job.round_votes.setdefault(vote.round, {}).setdefault(vote.signer, set()).add(vote.provider)
        out: list[Output] = []
        evidence = self.evidence.add_assign(vote)
        if evidence is not None:
            out.append(Slash(evidence))
        if job.qc is not None:
            return out
        if has_quorum(self.checkers.stake_of_all(signers), self.checkers.total_stake):
            qc = build_assign_qc(
                self.domain, self.checkers, vote.job_id, vote.round, vote.provider, signers
            )
            if qc is not None:
                return out + self._decide(vote.job_id, job, qc)
        round_ = job.round
        if rules.is_proposal(self.checkers, vote.job_id, vote.round, vote.signer):
            job.proposals.setdefault(vote.round, vote)
            round_ = max(round_, vote.round)
        # A new vote may be the proposal we waited for, or may release our lock.
        return out + self._consider(vote.job_id, job, round_)

    def _decide(self, job_id: int, job: JobState, qc: AssignQC) -> list[Output]:
        job.qc = qc
        job.lock = rules.record_qc_seen(job.lock)
        if self.store is not None:
            self.store.record_assign_qc_seen(job_id, qc.provider)
        return [Broadcast(qc), Decided(qc)]
