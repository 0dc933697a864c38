"""Certified deploys: the rule a deploy command must pass before any container starts.

Request frame on ``/kaisar/deploy/1`` (checker -> provider)::

    {t: "deploy", job_id: int, round: int, provider: "0x..." (checksummed), sigs: [65-byte, ...]}

Reply (provider -> checker)::

    {t: "deployed", job_id, qc_digest, container_port, state}    # also for a repeat
    {t: "refused", job_id, reason}

``check_deploy`` is the whole acceptance rule over plain data (the job read from the
chain, the checker set read from the chain, the QC from the request); the service
only fetches those and calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.chain.api import JOB_ASSIGNED, JOB_OPEN, Job
from node.consensus.checkers import CheckerSet
from node.consensus.qc import AssignQC, InvalidVote, verify_assign_qc
from node.eip712 import Domain

PROTOCOL_ID = "/kaisar/deploy/1"
MAX_REQUEST_BYTES = 64 + 256 * 80  # at most 256 signatures (consensus MAX_CHECKERS)
MAX_SIGS = 256


class DeployRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DeployRequest:
    job_id: int
    round: int
    provider: str
    sigs: tuple[bytes, ...]

    @property
    def qc(self) -> AssignQC:
        return AssignQC(self.job_id, self.round, self.provider, self.sigs)

    def to_frame(self) -> dict[str, Any]:
        return {
            "t": "deploy",
            "job_id": self.job_id,
            "round": self.round,
            "provider": self.provider,
            "sigs": list(self.sigs),
        }


def deploy_request(qc: AssignQC) -> dict[str, Any]:
    """The frame a checker sends for a quorum certificate."""
    return DeployRequest(qc.job_id, qc.round, qc.provider, tuple(qc.signatures)).to_frame()


def decode_deploy(obj: Any) -> DeployRequest:
    """Shape check; raises DeployRefused('malformed ...') (a missing QC is malformed)."""
    if type(obj) is not dict or obj.get("t") != "deploy":
        raise DeployRefused("malformed request: not a deploy frame")
    if set(obj) != {"t", "job_id", "round", "provider", "sigs"}:
        raise DeployRefused("malformed request: needs job_id, round, provider and sigs (the QC)")
    job_id, round_, provider, sigs = obj["job_id"], obj["round"], obj["provider"], obj["sigs"]
    if type(job_id) is not int or not 0 <= job_id < 1 << 256:
        raise DeployRefused("malformed request: job_id")
    if type(round_) is not int or not 0 <= round_ < 1 << 256:
        raise DeployRefused("malformed request: round")
    if type(provider) is not str or len(provider) != 42 or not provider.startswith("0x"):
        raise DeployRefused("malformed request: provider")
    if type(sigs) is not list or not 0 < len(sigs) <= MAX_SIGS:
        raise DeployRefused("no quorum certificate: sigs must be 1..256 signatures")
    if not all(type(s) is bytes and len(s) == 65 for s in sigs):
        raise DeployRefused("malformed request: each signature is 65 bytes")
    return DeployRequest(job_id, round_, provider, tuple(sigs))


def check_deploy(
    req: DeployRequest, me: str, job: Job, checkers: CheckerSet, domain: Domain
) -> None:
    """Raise DeployRefused(reason) unless ``req`` certifies ``job`` for provider ``me``."""
    # The certificate names this provider
    if req.provider.lower() != me.lower():
        raise DeployRefused(f"certificate names provider {req.provider}, not {me}")
    # The job exists on chain
    if not job.exists:
        raise DeployRefused(f"job {req.job_id} does not exist on chain")
    # The job is waiting for a provider, or the chain already gave it to this one in this round
    if job.state == JOB_ASSIGNED:
        if job.provider.lower() != me.lower():
            raise DeployRefused(f"job {req.job_id} is assigned on chain to {job.provider}")
        if job.round != req.round:
            raise DeployRefused(f"job {req.job_id} was assigned in round {job.round}, not {req.round}")
    elif job.state == JOB_OPEN:
        # A round closed by a failure cannot be replayed (the contract's own rule)
        if req.round < job.round:
            raise DeployRefused(f"round {req.round} is closed (job is in round {job.round})")
    else:
        raise DeployRefused(f"job {req.job_id} has ended on chain (state {job.state})")
    # >= 2/3 of the on-chain checker stake signed AssignVote(job, round, this provider)
    try:
        verify_assign_qc(domain, checkers, req.qc)
    except (InvalidVote, ValueError) as exc:
        raise DeployRefused(f"invalid quorum certificate: {exc}") from None
