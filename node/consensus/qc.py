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
from typing import TypeVar

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


# Round votes and certificates ------------------------------------------------------
#
# An assignment round has two votes of the same shape, (job, round, provider), signed
# over two EIP-712 structs: the off-chain prevote (``PrevoteStruct``) and the on-chain
# ``AssignVote`` (a precommit). Their certificates are the PrepareQC and the AssignQC.
# One rule checks a vote of either kind (``verify_round_vote``), one a certificate of
# either kind (``verify_round_qc``), and one builds either (``build_round_qc``); the
# struct is the only difference, and it is part of the digest, so a prevote can never
# pass as an AssignVote or the other way round (it recovers to a stranger).


@dataclass(frozen=True)
class RoundVote:
    """``signer``'s signature over (job_id, round, provider); the subclass names the struct."""

    job_id: int
    round: int
    provider: str
    signer: str
    signature: bytes

    def digest(self, domain: Domain) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True)
class RoundQC:
    """Signatures of >= 2/3 of checker stake over one (job_id, round, provider) struct,
    sorted by signer address; the subclass names the struct."""

    job_id: int
    round: int
    provider: str
    signatures: tuple[bytes, ...]

    def digest(self, domain: Domain) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True)
class SignedPrevote(RoundVote):
    """``signer`` prevotes: job ``job_id`` in round ``round`` should go to ``provider``."""

    def digest(self, domain: Domain) -> bytes:
        return prevote_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class SignedAssignVote(RoundVote):
    """``signer`` says: job ``job_id`` in round ``round`` goes to ``provider``.

    The on-chain vote: a checker's precommit, signed only on a PrepareQC for the same
    (job, round, provider) (``assignment.may_precommit``).
    """

    def digest(self, domain: Domain) -> bytes:
        return assign_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class PrepareQC(RoundQC):
    """>= 2/3 of checker stake prevoted (job_id, round, provider): a "polka".

    Checkers lock on it: they sign the on-chain ``AssignVote`` only for a round and
    provider with a PrepareQC, and a later proposal may carry one as its justification.
    """

    def digest(self, domain: Domain) -> bytes:
        return prevote_digest(domain, self.job_id, self.round, self.provider)


@dataclass(frozen=True)
class AssignQC(RoundQC):
    """>= 2/3 of checker stake signed AssignVote(job_id, round, provider): the decision
    the chain takes (``Escrow.assign``) and the provider deploys on."""

    def digest(self, domain: Domain) -> bytes:
        return assign_digest(domain, self.job_id, self.round, self.provider)


def verify_round_vote(domain: Domain, checkers: CheckerSet, vote: RoundVote) -> None:
    """Raise InvalidVote unless ``vote`` is a checker's own signature over its fields."""
    # The signer is an active checker
    require(vote.signer in checkers, "signer is not an active checker")
    # The signature recovers to the signer under our domain and the vote's struct (no
    # replay from another chain, contract, vote kind, job, round or provider)
    require(recover_signer(vote.digest(domain), vote.signature) == vote.signer, "bad signature")


def recover_signers(digest: bytes, signatures: Iterable[bytes]) -> list[str | None]:
    return [recover_signer(digest, s) for s in signatures]


def verify_quorum_signatures(
    digest: bytes, signatures: tuple[bytes, ...], checkers: CheckerSet
) -> None:
    """The rule a contract applies to any certificate's signature list (also PoPW)."""
    signers = recover_signers(digest, signatures)
    # Every signature is well formed
    require(all(s is not None for s in signers), "malformed signature")
    # No checker signs twice (its stake would count twice)
    require(len(set(signers)) == len(signers), "duplicate signer")
    # Every signer is in the relevant set (wrong domain or kind recovers a stranger)
    require(all(s in checkers for s in signers), "unknown signer")
    # The signers hold at least 2/3 of the relevant stake
    require(has_quorum(checkers.stake_of_all(signers), checkers.total_stake), "stake below quorum")  # type: ignore[arg-type]


def verify_round_qc(domain: Domain, checkers: CheckerSet, qc: RoundQC) -> None:
    """Raise InvalidVote unless ``qc`` certifies its (job, round, provider) under
    ``domain`` and its struct (a PrepareQC: prevotes; an AssignQC: AssignVotes)."""
    # The certificate names a job, a round and a provider
    require(qc.job_id >= 0 and qc.round >= 0, "negative job or round")
    # Well-formed signatures of distinct known checkers holding >= 2/3 of the stake
    verify_quorum_signatures(qc.digest(domain), qc.signatures, checkers)


QC = TypeVar("QC", bound=RoundQC)


def build_round_qc(
    kind: type[QC],
    domain: Domain,
    checkers: CheckerSet,
    job_id: int,
    round_: int,
    provider: str,
    signatures: dict[str, bytes],
) -> QC | None:
    """A ``kind`` certificate from ``{signer: signature}`` if the valid ones reach
    quorum, else None. Invalid entries (strangers, signatures that do not recover to
    their signer) are dropped; the rest are sorted by signer, as the contract wants."""
    digest = kind(job_id, round_, provider, ()).digest(domain)
    good = {
        s: sig
        for s, sig in signatures.items()
        if s in checkers and recover_signer(digest, sig) == s
    }
    if not has_quorum(checkers.stake_of_all(good), checkers.total_stake):
        return None
    return kind(job_id, round_, provider, tuple(good[s] for s in sorted(good, key=str.lower)))


# The same rules under the names the machine, the provider and the client read best.
verify_prevote = verify_assign_vote = verify_round_vote
verify_prepare_qc = verify_assign_qc = verify_round_qc


def build_prepare_qc(
    domain: Domain,
    checkers: CheckerSet,
    job_id: int,
    round_: int,
    provider: str,
    signatures: dict[str, bytes],
) -> PrepareQC | None:
    return build_round_qc(PrepareQC, domain, checkers, job_id, round_, provider, signatures)


def build_assign_qc(
    domain: Domain,
    checkers: CheckerSet,
    job_id: int,
    round_: int,
    provider: str,
    signatures: dict[str, bytes],
) -> AssignQC | None:
    return build_round_qc(AssignQC, domain, checkers, job_id, round_, provider, signatures)


def is_valid_assign_vote(domain: Domain, checkers: CheckerSet, vote: SignedAssignVote) -> bool:
    try:
        verify_round_vote(domain, checkers, vote)
    except InvalidVote:
        return False
    return True


def is_valid_assign_qc(domain: Domain, checkers: CheckerSet, qc: AssignQC) -> bool:
    try:
        verify_round_qc(domain, checkers, qc)
    except (InvalidVote, ValueError):
        return False
    return True


def sign_assign_vote(
    identity: Identity, domain: Domain, job_id: int, round_: int, provider: str
) -> SignedAssignVote:
    digest = assign_digest(domain, job_id, round_, provider)
    return SignedAssignVote(job_id, round_, provider, identity.address, votes.sign(identity, digest))


def sign_prevote(
    identity: Identity, domain: Domain, job_id: int, round_: int, provider: str
) -> SignedPrevote:
    digest = prevote_digest(domain, job_id, round_, provider)
    return SignedPrevote(job_id, round_, provider, identity.address, votes.sign(identity, digest))


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


def verify_proposal(domain: Domain, checkers: CheckerSet, proposal: Proposal) -> None:
    """Raise InvalidVote unless ``proposal`` is the round leader's prevote, justified if
    it carries a PrepareQC (the leader is checked by the caller: ``is_proposal``)."""
    verify_round_vote(domain, checkers, proposal.prevote)
    j = proposal.justify
    if j is not None:
        # The justification is for the same job and provider
        require((j.job_id, j.provider) == (proposal.job_id, proposal.provider), "foreign justify")
        # ...from an earlier round
        require(j.round < proposal.round, "justify not from an earlier round")
        verify_round_qc(domain, checkers, j)


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
