"""What checkers gossip: signed envelopes that carry consensus votes and certificates.

Each envelope is signed by the publishing checker's node key (the host requires the
envelope signer to be the publishing peer). Inside it travels the EIP-712 vote signature
that the contracts verify (``vote_sig``) or a certificate's signature list (``sigs``).
The envelope proves who sent it; the vote signature is what counts for quorums, and is
checked against the checker set by ``node.consensus`` before anything uses it.

Assignment (docs/CONSENSUS.md): the leader gossips its proposal and the two
certificates; votes go to the leader only, as envelopes on a direct stream
(``VOTE_PROTOCOL``), or by gossip when the leader is not connected.

- ``AssignProposalMsg`` (assign/1): the round leader's prevote, with the PrepareQC that
  justifies its provider (``justify_sigs`` empty: none).
- ``AssignPrevoteMsg`` (direct): a checker's prevote, to the round leader.
- ``PrepareQCMsg`` (assign/1; direct as a "new view" to the next leader): >= 2/3 prevotes.
- ``AssignVoteMsg`` (direct): a checker's precommit, the on-chain AssignVote, to the leader.
- ``AssignQCMsg`` (assign/1): an assignment certificate, so late checkers lock at once.
- ``FailureVoteMsg`` (assign/1): "the provider of (job, round) failed", with a reason.
- ``PopwAttest`` (attest/1): a committee member's PopwVote plus the measured TFLOPS
  (unsigned by the EIP-712 struct, see CONSENSUS.md open points; informational only).
- ``PopwQCMsg`` (attest/1): a PoPW certificate, so checkers outside the committee learn
  which providers are in standing.
"""

from __future__ import annotations

from eth_utils import to_canonical_address, to_checksum_address

from node import wire
from node.consensus.qc import (
    AssignQC,
    PopwQC,
    PrepareQC,
    Proposal,
    SignedAssignVote,
    SignedPopwVote,
    SignedPrevote,
)
from node.p2p.host import TOPIC_TYPES

ASSIGN_TOPIC = "assign/1"
VOTE_PROTOCOL = "/kaisar/vote/1"  # direct votes to a round leader: a stream of envelopes
ATTEST_TOPIC = "attest/1"
MAX_SIGS = 256
SIG_LEN = 65


def _check_sigs(value: list) -> None:
    for s in value:
        if type(s) is not bytes or len(s) != SIG_LEN:
            raise ValueError("sigs: 65-byte signatures")


def _sig_field(name: str) -> wire.Field:
    return wire.Field(name, "bytes", exact_len=SIG_LEN, max_len=SIG_LEN)


_QC_SIZE = 2048 + MAX_SIGS * (SIG_LEN + 3)

ASSIGN_VOTE = wire.register(
    wire.MessageType(
        "AssignVoteMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            _sig_field("vote_sig"),
        ),
        max_size=1024,
        max_ttl_ms=120_000,
    )
)
ASSIGN_QC = wire.register(
    wire.MessageType(
        "AssignQCMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            wire.Field("sigs", "list", max_len=MAX_SIGS, check=_check_sigs),
        ),
        max_size=_QC_SIZE,
        max_ttl_ms=600_000,
    )
)
ASSIGN_PREVOTE = wire.register(
    wire.MessageType(
        "AssignPrevoteMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            _sig_field("vote_sig"),
        ),
        max_size=1024,
        max_ttl_ms=120_000,
    )
)
ASSIGN_PROPOSAL = wire.register(
    wire.MessageType(
        "AssignProposalMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            _sig_field("vote_sig"),
            wire.Field("justify_round", "uint", bits=256),
            wire.Field("justify_sigs", "list", max_len=MAX_SIGS, check=_check_sigs),
        ),
        max_size=_QC_SIZE,
        max_ttl_ms=120_000,
    )
)
PREPARE_QC = wire.register(
    wire.MessageType(
        "PrepareQCMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            wire.Field("sigs", "list", max_len=MAX_SIGS, check=_check_sigs),
        ),
        max_size=_QC_SIZE,
        max_ttl_ms=600_000,
    )
)
FAILURE_VOTE = wire.register(
    wire.MessageType(
        "FailureVoteMsg",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("provider", "address"),
            wire.Field("reason", "str", max_len=256),
            _sig_field("vote_sig"),
        ),
        max_size=1536,
        max_ttl_ms=300_000,
    )
)
POPW_ATTEST = wire.register(
    wire.MessageType(
        "PopwAttest",
        (
            wire.Field("epoch", "uint"),
            wire.Field("provider", "address"),
            wire.Field("verdict", "uint", bits=8),
            wire.Field("gpu_class", "bytes32"),
            wire.Field("tflops_milli", "uint"),
            _sig_field("vote_sig"),
        ),
        max_size=1024,
        max_ttl_ms=600_000,
    )
)
POPW_QC = wire.register(
    wire.MessageType(
        "PopwQCMsg",
        (
            wire.Field("epoch", "uint"),
            wire.Field("provider", "address"),
            wire.Field("verdict", "uint", bits=8),
            wire.Field("gpu_class", "bytes32"),
            wire.Field("sigs", "list", max_len=MAX_SIGS, check=_check_sigs),
        ),
        max_size=_QC_SIZE,
        max_ttl_ms=3_600_000,
    )
)

ASSIGN_TYPES = frozenset(
    {"AssignProposalMsg", "AssignPrevoteMsg", "PrepareQCMsg", "AssignVoteMsg", "AssignQCMsg"}
)
DIRECT_TYPES = ASSIGN_TYPES
TOPIC_TYPES[ASSIGN_TOPIC] |= ASSIGN_TYPES | {"FailureVoteMsg"}
TOPIC_TYPES[ATTEST_TOPIC] |= {"PopwAttest", "PopwQCMsg"}


# conversions ------------------------------------------------------------------------


def addr(raw: bytes) -> str:
    return to_checksum_address(raw)


def assign_vote_fields(v: SignedAssignVote) -> dict:
    return {
        "job_id": v.job_id,
        "round": v.round,
        "provider": to_canonical_address(v.provider),
        "vote_sig": v.signature,
    }


def assign_vote_from(env: wire.Envelope) -> SignedAssignVote:
    b = env.body
    return SignedAssignVote(b["job_id"], b["round"], addr(b["provider"]), env.signer, b["vote_sig"])


def assign_qc_fields(qc: AssignQC) -> dict:
    return {
        "job_id": qc.job_id,
        "round": qc.round,
        "provider": to_canonical_address(qc.provider),
        "sigs": list(qc.signatures),
    }


def assign_qc_from(env: wire.Envelope) -> AssignQC:
    b = env.body
    return AssignQC(b["job_id"], b["round"], addr(b["provider"]), tuple(b["sigs"]))


def _vote_fields(v: SignedAssignVote | SignedPrevote) -> dict:
    return {
        "job_id": v.job_id,
        "round": v.round,
        "provider": to_canonical_address(v.provider),
        "vote_sig": v.signature,
    }


def _cert_fields(qc: AssignQC | PrepareQC) -> dict:
    return {
        "job_id": qc.job_id,
        "round": qc.round,
        "provider": to_canonical_address(qc.provider),
        "sigs": list(qc.signatures),
    }


def assignment_fields(msg: object) -> tuple[str, dict]:
    """(envelope type, body fields) of an assignment message."""
    if isinstance(msg, Proposal):
        j = msg.justify
        fields = _vote_fields(msg.prevote)
        fields["justify_round"] = j.round if j else 0
        fields["justify_sigs"] = list(j.signatures) if j else []
        return "AssignProposalMsg", fields
    if isinstance(msg, SignedPrevote):
        return "AssignPrevoteMsg", _vote_fields(msg)
    if isinstance(msg, SignedAssignVote):
        return "AssignVoteMsg", _vote_fields(msg)
    if isinstance(msg, PrepareQC):
        return "PrepareQCMsg", _cert_fields(msg)
    if isinstance(msg, AssignQC):
        return "AssignQCMsg", _cert_fields(msg)
    raise TypeError(f"not an assignment message: {type(msg).__name__}")


def assignment_from(
    env: wire.Envelope,
) -> Proposal | SignedPrevote | PrepareQC | SignedAssignVote | AssignQC:
    """The consensus message in a validated envelope (votes are the envelope signer's)."""
    b = env.body
    job, rnd, provider = b["job_id"], b["round"], addr(b["provider"])
    if env.type == "AssignProposalMsg":
        vote = SignedPrevote(job, rnd, provider, env.signer, b["vote_sig"])
        sigs = tuple(b["justify_sigs"])
        justify = PrepareQC(job, b["justify_round"], provider, sigs) if sigs else None
        return Proposal(vote, justify)
    if env.type == "AssignPrevoteMsg":
        return SignedPrevote(job, rnd, provider, env.signer, b["vote_sig"])
    if env.type == "AssignVoteMsg":
        return SignedAssignVote(job, rnd, provider, env.signer, b["vote_sig"])
    if env.type == "PrepareQCMsg":
        return PrepareQC(job, rnd, provider, tuple(b["sigs"]))
    if env.type == "AssignQCMsg":
        return AssignQC(job, rnd, provider, tuple(b["sigs"]))
    raise ValueError(f"not an assignment message: {env.type}")


def popw_attest_fields(v: SignedPopwVote, tflops: float) -> dict:
    return {
        "epoch": v.epoch,
        "provider": to_canonical_address(v.provider),
        "verdict": v.verdict,
        "gpu_class": v.gpu_class,
        "tflops_milli": max(0, min(int(tflops * 1000), (1 << 64) - 1)),
        "vote_sig": v.signature,
    }


def popw_vote_from(env: wire.Envelope) -> SignedPopwVote:
    b = env.body
    return SignedPopwVote(
        b["epoch"], addr(b["provider"]), b["verdict"], b["gpu_class"], env.signer, b["vote_sig"]
    )


def popw_qc_fields(qc: PopwQC) -> dict:
    return {
        "epoch": qc.epoch,
        "provider": to_canonical_address(qc.provider),
        "verdict": qc.verdict,
        "gpu_class": qc.gpu_class,
        "sigs": list(qc.signatures),
    }


def popw_qc_from(env: wire.Envelope) -> PopwQC:
    b = env.body
    return PopwQC(b["epoch"], addr(b["provider"]), b["verdict"], b["gpu_class"], tuple(b["sigs"]))
