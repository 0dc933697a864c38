"""Signed votes and quorum certificates (QCs).

A vote is one checker's EIP-712 signature over an ``AssignVote`` or ``PopwVote``
(``node.consensus.votes``). A QC is the vote's fields plus the signatures of checkers
holding at least 2/3 of the relevant stake; it carries signatures only, sorted by
signer address, because that is what the contracts take (they ``ecrecover`` each one).

Validation reads top to bottom like the contract's: every signature recovers, no signer
twice, every signer in the set, quorum by stake. The domain is part of every digest, so
a signature made for another chain, contract or vote kind recovers to a stranger and
fails the "known signer" check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from eth_keys.exceptions import BadSignature

from node.consensus import votes
from node.consensus.checkers import CheckerSet
from node.eip712 import Domain
from node.identity import Identity

# A quorum is >= QUORUM_NUMERATOR / QUORUM_DENOMINATOR of the relevant stake.
QUORUM_NUMERATOR = 2
QUORUM_DENOMINATOR = 3
SIGNATURE_LENGTH = 65
RECOVER_CACHE_SIZE = 1 << 16


class InvalidVote(ValueError):
    """A vote or certificate that breaks a rule; the message names the rule."""


def require(condition: bool, reason: str) -> None:
    """``assert`` that survives ``python -O``: a broken rule raises InvalidVote(reason)."""
    if not condition:
        raise InvalidVote(reason)


def has_quorum(signed_stake: int, total_stake: int) -> bool:
    """``3 * signed >= 2 * total`` in integers: no rounding, exact at the boundary."""
    return total_stake > 0 and QUORUM_DENOMINATOR * signed_stake >= QUORUM_NUMERATOR * total_stake


# Digests and recovery are pure functions of their inputs; caching them lets a node (or
# the simulation) check each (digest, signature) pair once however often it is relayed.
assign_digest = lru_cache(maxsize=RECOVER_CACHE_SIZE)(votes.assign_digest)
popw_digest = lru_cache(maxsize=RECOVER_CACHE_SIZE)(votes.popw_digest)
prevote_digest = lru_cache(maxsize=RECOVER_CACHE_SIZE)(votes.prevote_digest)


@lru_cache(maxsize=RECOVER_CACHE_SIZE)
def recover_signer(digest: bytes, signature: bytes) -> str | None:
    """Checksummed signer of ``digest``, or None for a malformed signature."""
    if len(signature) != SIGNATURE_LENGTH:
        return None
    try:
        return votes.signer_of(digest, signature)
    except BadSignature:  # votes.signer_of lets eth_keys' "no such point" error escape
        return None


# Assignment votes -----------------------------------------------------------


@dataclass(frozen=True)
class SignedAssignVote:
    """``signer`` says: job ``job_id`` in round ``round`` goes to ``provider``.

    The on-chain vote: a checker's precommit, signed only on a PrepareQC for the same
    (job, round, provider) (``assignment.may_precommit``).
    """

    job_id: int
    round: int
    provider: str
    signer: str
    signature: bytes

    def digest(self, domain: Domain) -> bytes:
        return assign_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class AssignQC:
    """>= 2/3 of checker stake signed AssignVote(job_id, round, provider)."""

    job_id: int
    round: int
    provider: str
    signatures: tuple[bytes, ...]

    def digest(self, domain: Domain) -> bytes:
        return assign_digest(domain, self.job_id, self.round, self.provider)


def sign_assign_vote(
    identity: Identity, domain: Domain, job_id: int, round_: int, provider: str
) -> SignedAssignVote:
    digest = assign_digest(domain, job_id, round_, provider)
    return SignedAssignVote(
        job_id, round_, provider, identity.address, votes.sign(identity, digest)
    )


def verify_assign_vote(domain: Domain, checkers: CheckerSet, vote: SignedAssignVote) -> None:
    """Raise InvalidVote unless ``vote`` is a checker's own signature over its fields."""
    # The signer is an active checker
    require(vote.signer in checkers, "signer is not an active checker")
    # The signature recovers to the claimed signer under our domain (no replay from
    # another chain, contract, job, round or provider)
    require(recover_signer(vote.digest(domain), vote.signature) == vote.signer, "bad signature")


def is_valid_assign_vote(domain: Domain, checkers: CheckerSet, vote: SignedAssignVote) -> bool:
    try:
        verify_assign_vote(domain, checkers, vote)
    except InvalidVote:
        return False
    return True


def recover_signers(digest: bytes, signatures: Iterable[bytes]) -> list[str | None]:
    return [recover_signer(digest, s) for s in signatures]


def verify_quorum_signatures(
    digest: bytes, signatures: tuple[bytes, ...], checkers: CheckerSet
) -> None:
    """The rule a contract applies to any certificate's signature list."""
    signers = recover_signers(digest, signatures)
    # Every signature is well formed
    require(all(s is not None for s in signers), "malformed signature")
    # No checker signs twice (its stake would count twice)
    require(len(set(signers)) == len(signers), "duplicate signer")
    # Every signer is in the relevant set (wrong domain or kind recovers a stranger)
    require(all(s in checkers for s in signers), "unknown signer")
    # The signers hold at least 2/3 of the relevant stake
    require(has_quorum(checkers.stake_of_all(signers), checkers.total_stake), "stake below quorum")  # type: ignore[arg-type]


def verify_assign_qc(domain: Domain, checkers: CheckerSet, qc: AssignQC) -> None:
    """Raise InvalidVote unless ``qc`` certifies its assignment under ``domain``."""
    # The certificate names a job, a round and a provider
    require(qc.job_id >= 0 and qc.round >= 0, "negative job or round")
    verify_quorum_signatures(qc.digest(domain), qc.signatures, checkers)


def is_valid_assign_qc(domain: Domain, checkers: CheckerSet, qc: AssignQC) -> bool:
    try:
        verify_assign_qc(domain, checkers, qc)
    except (InvalidVote, ValueError):
        return False
    return True


def build_assign_qc(
    domain: Domain,
    checkers: CheckerSet,
    job_id: int,
    round_: int,
    provider: str,
    signatures: dict[str, bytes],
) -> AssignQC | None:
    """QC from ``{signer: signature}`` if the valid ones reach quorum, else None."""
    digest = assign_digest(domain, job_id, round_, provider)
    good = {
        s: sig
        for s, sig in signatures.items()
        if s in checkers and recover_signer(digest, sig) == s
    }
    if not has_quorum(checkers.stake_of_all(good), checkers.total_stake):
        return None
    ordered = tuple(good[s] for s in sorted(good, key=str.lower))
    return AssignQC(job_id, round_, provider, ordered)


# Prevotes and prepare certificates (off-chain) -----------------------------------


@dataclass(frozen=True)
class SignedPrevote:
    """``signer`` prevotes: job ``job_id`` in round ``round`` should go to ``provider``."""

    job_id: int
    round: int
    provider: str
    signer: str
    signature: bytes

    def digest(self, domain: Domain) -> bytes:
        return prevote_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class PrepareQC:
    """>= 2/3 of checker stake prevoted (job_id, round, provider): a "polka".

    Checkers lock on it: they sign the on-chain ``AssignVote`` only for a round and
    provider with a PrepareQC, and a later proposal may carry one as its justification.
    """

    job_id: int
    round: int
    provider: str
    signatures: tuple[bytes, ...]

    def digest(self, domain: Domain) -> bytes:
        return prevote_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class Proposal:
    """The round leader's own prevote, plus the PrepareQC that justifies its provider
    (None when the leader knows of no PrepareQC for the job)."""

    prevote: SignedPrevote
    justify: PrepareQC | None = None

    @property
    def job_id(self) -> int:
        return self.prevote.job_id

    @property
    def round(self) -> int:
        return self.prevote.round

    @property
    def provider(self) -> str:
        return self.prevote.provider


def sign_prevote(
    identity: Identity, domain: Domain, job_id: int, round_: int, provider: str
) -> SignedPrevote:
    digest = prevote_digest(domain, job_id, round_, provider)
    return SignedPrevote(job_id, round_, provider, identity.address, votes.sign(identity, digest))


def verify_prevote(domain: Domain, checkers: CheckerSet, vote: SignedPrevote) -> None:
    """Raise InvalidVote unless ``vote`` is a checker's own prevote over its fields."""
    # The signer is an active checker
    require(vote.signer in checkers, "signer is not an active checker")
    # The signature recovers to the signer under our domain and the prevote struct
    require(recover_signer(vote.digest(domain), vote.signature) == vote.signer, "bad signature")


def verify_prepare_qc(domain: Domain, checkers: CheckerSet, qc: PrepareQC) -> None:
    """Raise InvalidVote unless ``qc`` holds prevotes of >= 2/3 of stake for its fields."""
    # The certificate names a job, a round and a provider
    require(qc.job_id >= 0 and qc.round >= 0, "negative job or round")
    verify_quorum_signatures(qc.digest(domain), qc.signatures, checkers)


def verify_proposal(domain: Domain, checkers: CheckerSet, proposal: Proposal) -> None:
    """Raise InvalidVote unless ``proposal`` is the round leader's prevote, justified if
    it carries a PrepareQC (the leader is checked by the caller: ``is_proposal``)."""
    verify_prevote(domain, checkers, proposal.prevote)
    j = proposal.justify
    if j is not None:
        # The justification is for the same job and provider
        require((j.job_id, j.provider) == (proposal.job_id, proposal.provider), "foreign justify")
        # ...from an earlier round
        require(j.round < proposal.round, "justify not from an earlier round")
        verify_prepare_qc(domain, checkers, j)


def build_prepare_qc(
    domain: Domain,
    checkers: CheckerSet,
    job_id: int,
    round_: int,
    provider: str,
    signatures: dict[str, bytes],
) -> PrepareQC | None:
    """PrepareQC from ``{signer: signature}`` if the valid ones reach quorum, else None."""
    digest = prevote_digest(domain, job_id, round_, provider)
    good = _good_signatures(digest, checkers, signatures)
    if not has_quorum(checkers.stake_of_all(good), checkers.total_stake):
        return None
    return PrepareQC(job_id, round_, provider, tuple(good[s] for s in sorted(good, key=str.lower)))


def _good_signatures(digest: bytes, checkers: CheckerSet, signatures: dict[str, bytes]) -> dict:
    return {
        s: sig
        for s, sig in signatures.items()
        if s in checkers and recover_signer(digest, sig) == s
    }


# PoPW votes ----------------------------------------------------------------


@dataclass(frozen=True)
class SignedPopwVote:
    """``signer`` says: in ``epoch``, ``provider`` got ``verdict`` for ``gpu_class``."""

    epoch: int
    provider: str
    verdict: int
    gpu_class: bytes
    signer: str
    signature: bytes

    def digest(self, domain: Domain) -> bytes:
        return popw_digest(domain, self.epoch, self.provider, self.verdict, self.gpu_class)


@dataclass(frozen=True)
class PopwQC:
    """>= 2/3 of the provider's committee stake signed the same verdict."""

    epoch: int
    provider: str
    verdict: int
    gpu_class: bytes
    signatures: tuple[bytes, ...]

    def digest(self, domain: Domain) -> bytes:
        return popw_digest(domain, self.epoch, self.provider, self.verdict, self.gpu_class)


VERDICTS = (votes.VERDICT_PASS, votes.VERDICT_FAIL, votes.VERDICT_LATE)


def sign_popw_vote(
    identity: Identity, domain: Domain, epoch: int, provider: str, verdict: int, gpu_class: bytes
) -> SignedPopwVote:
    digest = popw_digest(domain, epoch, provider, verdict, gpu_class)
    return SignedPopwVote(
        epoch, provider, verdict, gpu_class, identity.address, votes.sign(identity, digest)
    )


def verify_popw_vote(
    domain: Domain, committee: CheckerSet, vote: SignedPopwVote, epoch: int
) -> None:
    # The vote is for the current epoch (no replay of an old attestation)
    require(vote.epoch == epoch, "wrong epoch")
    # The verdict is one the contract knows
    require(vote.verdict in VERDICTS, "unknown verdict")
    # The signer is on this provider's committee
    require(vote.signer in committee, "signer not on the provider's committee")
    # The signature recovers to the signer under our domain
    require(recover_signer(vote.digest(domain), vote.signature) == vote.signer, "bad signature")


def verify_popw_qc(domain: Domain, committee: CheckerSet, qc: PopwQC, epoch: int) -> None:
    """Raise InvalidVote unless ``qc`` certifies the verdict for ``epoch``."""
    # The certificate is for the epoch being checked
    require(qc.epoch == epoch, "wrong epoch")
    # The verdict is one the contract knows
    require(qc.verdict in VERDICTS, "unknown verdict")
    # 2/3 of the committee's stake, no duplicates, no strangers
    verify_quorum_signatures(qc.digest(domain), qc.signatures, committee)


def is_valid_popw_qc(domain: Domain, committee: CheckerSet, qc: PopwQC, epoch: int) -> bool:
    try:
        verify_popw_qc(domain, committee, qc, epoch)
    except (InvalidVote, ValueError):
        return False
    return True


def build_popw_qc(
    domain: Domain, committee: CheckerSet, vote_list: Iterable[SignedPopwVote], epoch: int
) -> PopwQC | None:
    """QC for the first (verdict, class) whose valid votes reach quorum, else None."""
    groups: dict[tuple[int, bytes, str], dict[str, bytes]] = {}
    for v in vote_list:
        try:
            verify_popw_vote(domain, committee, v, epoch)
        except InvalidVote:
            continue
        groups.setdefault((v.verdict, v.gpu_class, v.provider), {}).setdefault(
            v.signer, v.signature
        )
    for (verdict, gpu_class, provider), sigs in sorted(groups.items()):
        if has_quorum(committee.stake_of_all(sigs), committee.total_stake):
            ordered = tuple(sigs[s] for s in sorted(sigs, key=str.lower))
            return PopwQC(epoch, provider, verdict, gpu_class, ordered)
    return None
