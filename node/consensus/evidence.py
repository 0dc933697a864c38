"""Equivocation evidence: two conflicting signatures by one checker.

Slashable (DESIGN section 7, the Staking contract's ``slash``):
- two ``AssignVote`` signatures, same (jobId, round), different provider;
- two ``PopwVote`` signatures, same (epoch, provider), different (verdict, gpuClass).

``Evidence`` holds both messages' fields and both 65-byte signatures;
``Evidence.slash_call()`` is the Staking contract call (``slash_assign`` /
``slash_popw``), which recomputes both digests, recovers the same signer from both and
checks that the subject is equal and the content differs (tests/test_consensus_onchain.py
submits it to the real contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.consensus.qc import SignedAssignVote, SignedPopwVote, require
from node.eip712 import Domain

KIND_ASSIGN = 1
KIND_POPW = 2


@dataclass(frozen=True)
class Evidence:
    kind: int  # KIND_ASSIGN or KIND_POPW
    signer: str
    message_a: (
        dict  # AssignVote {jobId, round, provider} or PopwVote {epoch, provider, verdict, gpuClass}
    )
    signature_a: bytes
    message_b: dict
    signature_b: bytes

    def slash_call(self) -> tuple[str, tuple]:
        """The Staking contract function and its arguments.

        ``slash_assign(job_id, round, provider_a, sig_a, provider_b, sig_b)`` or
        ``slash_popw(epoch, provider, verdict_a, gpu_class_a, sig_a, verdict_b,
        gpu_class_b, sig_b)``.
        """
        a, b = self.message_a, self.message_b
        if self.kind == KIND_ASSIGN:
            return "slash_assign", (
                a["jobId"], a["round"], a["provider"], self.signature_a,
                b["provider"], self.signature_b,
            )  # fmt: skip
        return "slash_popw", (
            a["epoch"], a["provider"], a["verdict"], a["gpuClass"], self.signature_a,
            b["verdict"], b["gpuClass"], self.signature_b,
        )  # fmt: skip


def assign_message(vote: SignedAssignVote) -> dict:
    return {"jobId": vote.job_id, "round": vote.round, "provider": vote.provider}


def popw_message(vote: SignedPopwVote) -> dict:
    return {
        "epoch": vote.epoch,
        "provider": vote.provider,
        "verdict": vote.verdict,
        "gpuClass": vote.gpu_class,
    }


def is_assign_equivocation(a: SignedAssignVote, b: SignedAssignVote) -> bool:
    """Same signer, same (job, round), different provider."""
    return (
        a.signer == b.signer
        and (a.job_id, a.round) == (b.job_id, b.round)
        and a.provider != b.provider
    )


def is_popw_equivocation(a: SignedPopwVote, b: SignedPopwVote) -> bool:
    """Same signer, same (epoch, provider), different (verdict, class)."""
    return (
        a.signer == b.signer
        and (a.epoch, a.provider) == (b.epoch, b.provider)
        and (a.verdict, a.gpu_class) != (b.verdict, b.gpu_class)
    )


def assign_evidence(a: SignedAssignVote, b: SignedAssignVote) -> Evidence:
    """Evidence from two *verified* conflicting assignment votes."""
    # Verify the votes really conflict
    require(is_assign_equivocation(a, b), "not an equivocation")
    first, second = sorted((a, b), key=lambda v: v.provider.lower())
    return Evidence(
        KIND_ASSIGN,
        a.signer,
        assign_message(first),
        first.signature,
        assign_message(second),
        second.signature,
    )


def popw_evidence(a: SignedPopwVote, b: SignedPopwVote) -> Evidence:
    # Verify the votes really conflict
    require(is_popw_equivocation(a, b), "not an equivocation")
    first, second = sorted((a, b), key=lambda v: (v.verdict, v.gpu_class))
    return Evidence(
        KIND_POPW,
        a.signer,
        popw_message(first),
        first.signature,
        popw_message(second),
        second.signature,
    )


def verify_evidence(domain: Domain, evidence: Evidence) -> None:
    """What the contract checks, off-chain (used by tests and before submitting)."""
    from node.consensus.qc import assign_digest, popw_digest, recover_signer

    a, b = evidence.message_a, evidence.message_b
    if evidence.kind == KIND_ASSIGN:
        # Same subject (job, round), different provider
        require((a["jobId"], a["round"]) == (b["jobId"], b["round"]), "different subjects")
        require(a["provider"] != b["provider"], "same content")
        da = assign_digest(domain, a["jobId"], a["round"], a["provider"])
        db = assign_digest(domain, b["jobId"], b["round"], b["provider"])
    else:
        # Same subject (epoch, provider), different (verdict, class)
        require((a["epoch"], a["provider"]) == (b["epoch"], b["provider"]), "different subjects")
        require((a["verdict"], a["gpuClass"]) != (b["verdict"], b["gpuClass"]), "same content")
        da = popw_digest(domain, a["epoch"], a["provider"], a["verdict"], a["gpuClass"])
        db = popw_digest(domain, b["epoch"], b["provider"], b["verdict"], b["gpuClass"])
    # Both signatures recover to the accused signer
    require(
        recover_signer(da, evidence.signature_a) == evidence.signer, "signature A not by signer"
    )
    require(
        recover_signer(db, evidence.signature_b) == evidence.signer, "signature B not by signer"
    )


@dataclass
class EvidencePool:
    """First verified vote per (signer, subject); a conflicting second vote yields Evidence once."""

    assign_seen: dict[tuple[str, int, int], SignedAssignVote] = field(default_factory=dict)
    popw_seen: dict[tuple[str, int, str], SignedPopwVote] = field(default_factory=dict)
    reported: set[tuple] = field(default_factory=set)

    def add_assign(self, vote: SignedAssignVote) -> Evidence | None:
        key = (vote.signer, vote.job_id, vote.round)
        first = self.assign_seen.setdefault(key, vote)
        if not is_assign_equivocation(first, vote) or (KIND_ASSIGN, *key) in self.reported:
            return None
        self.reported.add((KIND_ASSIGN, *key))
        return assign_evidence(first, vote)

    def add_popw(self, vote: SignedPopwVote) -> Evidence | None:
        key = (vote.signer, vote.epoch, vote.provider)
        first = self.popw_seen.setdefault(key, vote)
        if not is_popw_equivocation(first, vote) or (KIND_POPW, *key) in self.reported:
            return None
        self.reported.add((KIND_POPW, *key))
        return popw_evidence(first, vote)

    def forget_job(self, job_id: int) -> None:
        self.assign_seen = {k: v for k, v in self.assign_seen.items() if k[1] != job_id}
