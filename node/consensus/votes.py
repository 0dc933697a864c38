"""Checker votes: the EIP-712 structs that checkers sign and contracts verify.

AssignVote, PopwVote and FailureVote are the whole on-chain surface of the quorum protocol. The Vyper
contracts rebuild exactly these type strings (see docs/CONTRACTS.md); changing a field
here without changing the contracts breaks every certificate.

- ``AssignVote``: "job ``jobId`` in round ``round`` goes to ``provider``".
  Slashable equivocation: two signatures by one checker, same (jobId, round),
  different provider.
- ``PopwVote``: "in ``epoch``, ``provider`` got ``verdict`` for GPU class ``gpuClass``".
  Slashable equivocation: same (epoch, provider), different (verdict, gpuClass).
- ``AssignPrevote``: same fields as ``AssignVote``; never sent to a contract. A checker
  prevotes a round's proposal, and signs the ``AssignVote`` (the precommit) only after
  seeing prevotes of >= 2/3 of stake for it (a ``PrepareQC``).
- ``FailureVote``: "the provider of job ``jobId`` in ``round`` failed" (refund or
  reassignment path). Not an equivocation kind: a checker may certify a failure and
  later vote on the next round.

The domain's verifying contract is the Staking (checker registry) contract.
"""

from __future__ import annotations

from node.eip712 import Domain, StructType, signing_digest
from node.identity import Identity, recover_address

ASSIGN_VOTE = StructType(
    "AssignVote", (("jobId", "uint256"), ("round", "uint256"), ("provider", "address"))
)
POPW_VOTE = StructType(
    "PopwVote",
    (
        ("epoch", "uint256"),
        ("provider", "address"),
        ("verdict", "uint256"),
        ("gpuClass", "bytes32"),
    ),
)
# Off-chain only: the first of the two voting steps of an assignment round (docs/CONSENSUS.md).
# A distinct struct name, so a prevote can never be replayed as an AssignVote.
ASSIGN_PREVOTE = StructType(
    "AssignPrevote", (("jobId", "uint256"), ("round", "uint256"), ("provider", "address"))
)
FAILURE_VOTE = StructType(
    "FailureVote", (("jobId", "uint256"), ("round", "uint256"), ("provider", "address"))
)

# PopwVote.verdict values
VERDICT_PASS = 1
VERDICT_FAIL = 2
VERDICT_LATE = 3


def gpu_class_id(name: str) -> bytes:
    """bytes32 id of a GPU class name (right-padded ASCII, as Vyper's convert does)."""
    raw = name.encode()
    if not raw or len(raw) > 32:
        raise ValueError("GPU class name must be 1..32 bytes")
    return raw.ljust(32, b"\x00")


def assign_digest(domain: Domain, job_id: int, round_: int, provider: str) -> bytes:
    return signing_digest(
        domain, ASSIGN_VOTE, {"jobId": job_id, "round": round_, "provider": provider}
    )


def prevote_digest(domain: Domain, job_id: int, round_: int, provider: str) -> bytes:
    return signing_digest(
        domain, ASSIGN_PREVOTE, {"jobId": job_id, "round": round_, "provider": provider}
    )


def popw_digest(domain: Domain, epoch: int, provider: str, verdict: int, gpu_class: bytes) -> bytes:
    return signing_digest(
        domain,
        POPW_VOTE,
        {"epoch": epoch, "provider": provider, "verdict": verdict, "gpuClass": gpu_class},
    )


def failure_digest(domain: Domain, job_id: int, round_: int, provider: str) -> bytes:
    return signing_digest(
        domain, FAILURE_VOTE, {"jobId": job_id, "round": round_, "provider": provider}
    )


def sign(identity: Identity, digest: bytes) -> bytes:
    return identity.sign_digest(digest)


def signer_of(digest: bytes, signature: bytes) -> str | None:
    """The checksummed signer address, or None for a malformed signature."""
    try:
        return recover_address(digest, signature)
    except ValueError:
        return None
