"""What ``wait`` checks before it says "deployed" (pure rules over plain data).

A deployment claim has three parts, from three different sources, and each is checked
against the chain the client reads itself:

1. the assignment: the escrow's job is ASSIGNED to ``provider`` in ``round``;
2. the quorum certificate: AssignVote(job, round, provider) signatures that recover,
   under the deployment's EIP-712 domain, to distinct members of the *current on-chain
   active checker set* holding >= 2/3 of its stake;
3. the provider's status: a JobStatus envelope signed by the assigned provider's key,
   for this job and round, naming the same AssignVote digest, in state deployed/running.

No single node is trusted: the checkers' quorum is recomputed from signatures, the
provider's claim is its own signature, and the chain facts come from the RPC the user
chose (see docs/CLIENT.md for what that does and does not assume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node import wire
from node.chain.api import JOB_ASSIGNED, Job
from node.consensus import qc as qc_rules
from node.consensus.checkers import CheckerSet
from node.eip712 import Domain

LIVE_STATES = ("deployed", "running")


class Rejected(ValueError):
    """A rule failed; the message names it."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Rejected(reason)


@dataclass(frozen=True)
class Deployment:
    """A verified deployment: where the job runs and who certified it."""

    job_id: int
    round: int
    provider: str  # checksummed address, from the chain
    peer: str  # provider's base58 peer id (tunnels, logs, status)
    container_port: int
    image: str
    state: str  # deployed | running (the provider's signed status)
    qc_digest: bytes
    qc_signers: tuple[str, ...]
    signed_stake: int
    total_stake: int
    started: int
    expires: int


def verify_assignment(job: Job) -> None:
    # The escrow records an assignment for this job
    require(job.exists, f"job {job.job_id} does not exist on chain")
    require(
        job.state == JOB_ASSIGNED, f"job {job.job_id} is not assigned on chain (state {job.state})"
    )


def verify_qc(
    domain: Domain, checkers: CheckerSet, job: Job, sigs: Sequence[bytes]
) -> tuple[str, ...]:
    """Signers of a valid AssignVote QC for the job's on-chain (round, provider)."""
    cert = qc_rules.AssignQC(job.job_id, job.round, job.provider, tuple(bytes(s) for s in sigs))
    # >= 2/3 of active stake, every signer a distinct active checker, under our domain
    require(len(cert.signatures) > 0, "no quorum certificate")
    try:
        qc_rules.verify_assign_qc(domain, checkers, cert)
    except ValueError as exc:
        raise Rejected(f"quorum certificate invalid: {exc}") from None
    signers = qc_rules.recover_signers(cert.digest(domain), cert.signatures)
    return tuple(s for s in signers if s is not None)


def verify_status(domain: Domain, job: Job, status: wire.Envelope) -> None:
    """The provider's own signed word that the job's container is up."""
    b = status.body
    # It is a job status (wire.decode already checked signature, network and freshness)
    require(status.type == "JobStatus", f"not a job status: {status.type}")
    # The assigned provider signed it, nobody else
    require(
        status.signer == job.provider,
        f"status signed by {status.signer}, not by the assigned provider {job.provider}",
    )
    # It is about this job, in the assigned round
    require(b["job_id"] == job.job_id, f"status is for job {b['job_id']}, not {job.job_id}")
    require(
        b["round"] == job.round, f"status is for round {b['round']}, the chain says {job.round}"
    )
    # It names the certificate the chain recorded
    expected = qc_rules.assign_digest(domain, job.job_id, job.round, job.provider)
    require(b["qc_digest"] == expected, "status names another assignment (qc_digest differs)")
    # The container is up
    require(
        b["state"] in LIVE_STATES, f"provider reports {b['state']}: {b['reason'] or 'no reason'}"
    )


def verify_deployment(
    domain: Domain,
    checkers: CheckerSet,
    job: Job,
    status: wire.Envelope,
    qc_sources: Sequence[Sequence[bytes]],
) -> Deployment:
    """All three checks; every non-empty QC source must verify (a lying source fails)."""
    verify_assignment(job)
    sources = [s for s in qc_sources if s]
    require(bool(sources), "no quorum certificate (neither on chain nor from the provider)")
    signers: tuple[str, ...] = ()
    for sigs in sources:
        signers = verify_qc(domain, checkers, job, sigs)
    verify_status(domain, job, status)
    b = status.body
    return Deployment(
        job_id=job.job_id,
        round=job.round,
        provider=job.provider,
        peer=b["peer"],
        container_port=b["container_port"],
        image=b["image"],
        state=b["state"],
        qc_digest=b["qc_digest"],
        qc_signers=signers,
        signed_stake=checkers.stake_of_all(signers),
        total_stake=checkers.total_stake,
        started=b["started"],
        expires=b["expires"],
    )
