"""Assignment rounds: leaders, timeouts and the vote rule, as pure functions.

Job J is decided in rounds r = 0, 1, ... The leader of (J, r) is the r-th checker in
the order ``keccak(J, checker)``; its proposal is simply its own signed AssignVote for
(J, r, provider). A checker signs a proposal only if ``may_sign_assignment`` holds:

1. at most one vote per (J, r)                      -> no two QCs in one round;
2. nothing after a QC for J is known                -> the lock of DESIGN section 7;
3. only the provider of its latest vote for J, unless ``is_lock_released``
                                                    -> no two QCs across rounds.

Rule 3 is needed: rules 1-2 alone let a QC for A form in round r unseen (a Byzantine
checker withholds the last vote) while honest checkers sign B in round r+1.

Safety argument (n checkers, Byzantine stake B < T/3, quorum Q >= 2T/3):
- Let r_A be the lowest round with a QC, for provider A, and H_A its honest signers:
  stake(H_A) >= 2T/3 - B > T/3.
- A member of H_A signs another provider only after a release: a quorum V of round-r'
  votes (r' >= its lock round >= r_A), none for A. V and H_A overlap in stake
  >= 2T/3 + (2T/3 - B) - T > 0, and the first H_A member to switch would find an
  H_A member in V who voted A in round r'. Contradiction: H_A never switches.
- So any later QC for B != A gets signers only outside H_A: stake <= T - stake(H_A)
  <= T/3 + B < 2T/3. No second QC for J exists.

Liveness: honest leaders propose the deterministic scheduler's choice (the same for
all), or their locked provider; with f crashed of n = 3f+1, the leader order reaches
an honest leader within f+1 rounds and round timeouts grow until messages arrive in
time. A Byzantine leader that splits honest votes across providers is undone by the
release rule once a quorum has voted in that round.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from functools import lru_cache

from eth_utils import keccak, to_canonical_address

from node.consensus.checkers import CheckerSet
from node.consensus.qc import has_quorum

ROUND_TIMEOUT_SECONDS = 2.0
# Timeouts double each round up to this factor (partial synchrony: eventually long enough).
ROUND_TIMEOUT_MAX_FACTOR = 8
# A provider signed by >= 1/VOUCH_DENOMINATOR of stake is acceptable to every voter.
VOUCH_DENOMINATOR = 3


@dataclass(frozen=True)
class Lock:
    """A checker's own voting history for one job (persisted by ``VoteStore``)."""

    provider: str | None = None  # provider of the latest vote, None if never voted
    round: int = -1  # round of the latest vote
    signed_rounds: frozenset[int] = frozenset()
    qc_seen: bool = False


NO_LOCK = Lock()


def leader_rank(job_id: int, checker: str) -> bytes:
    return keccak(job_id.to_bytes(32, "big") + to_canonical_address(checker))


@lru_cache(maxsize=4096)
def get_leader_order(checkers: CheckerSet, job_id: int) -> tuple[str, ...]:
    """Checkers in leader order for ``job_id``; round r is led by entry r mod n."""
    return tuple(sorted(checkers.addresses, key=lambda c: leader_rank(job_id, c)))


def get_leader(checkers: CheckerSet, job_id: int, round_: int) -> str:
    order = get_leader_order(checkers, job_id)
    return order[round_ % len(order)]


def is_proposal(checkers: CheckerSet, job_id: int, round_: int, signer: str) -> bool:
    """A vote by the leader of its (job, round) is that round's proposal."""
    return signer == get_leader(checkers, job_id, round_)


def round_timeout(round_: int, base: float = ROUND_TIMEOUT_SECONDS) -> float:
    """How long round ``round_`` waits for a QC before moving to the next leader."""
    return base * min(2**round_, ROUND_TIMEOUT_MAX_FACTOR)


def record_own_vote(lock: Lock, round_: int, provider: str) -> Lock:
    """The lock after signing (J, round_, provider)."""
    latest = round_ >= lock.round
    return Lock(
        provider=provider if latest else lock.provider,
        round=max(round_, lock.round),
        signed_rounds=lock.signed_rounds | {round_},
        qc_seen=lock.qc_seen,
    )


def record_qc_seen(lock: Lock) -> Lock:
    return Lock(lock.provider, lock.round, lock.signed_rounds, qc_seen=True)


def is_lock_released(
    lock: Lock, round_votes: Mapping[int, Mapping[str, Set[str]]], checkers: CheckerSet
) -> bool:
    """Some round r' >= lock.round has a quorum of signers who voted for other providers.

    ``round_votes[r][signer]`` is the set of providers ``signer`` signed in round r
    (more than one only for an equivocator). Such a quorum proves no QC for the locked
    provider can exist (see the module docstring), so switching is safe.
    """
    if lock.provider is None:
        return True
    for r, by_signer in round_votes.items():
        if r < lock.round:
            continue
        others = [s for s, provs in by_signer.items() if any(p != lock.provider for p in provs)]
        if has_quorum(checkers.stake_of_all(others), checkers.total_stake):
            return True
    return False


def may_sign_assignment(lock: Lock, round_: int, provider: str, released: bool) -> bool:
    """The vote rule: may this checker sign AssignVote(J, round_, provider) now?"""
    # At most one vote per (job, round)
    if round_ in lock.signed_rounds:
        return False
    # After seeing a QC for the job, sign nothing else for it
    if lock.qc_seen:
        return False
    # Only the provider of my latest vote, unless a later quorum proved it cannot win
    return lock.provider is None or lock.provider == provider or released


def is_vouched(
    provider: str, round_votes: Mapping[int, Mapping[str, Set[str]]], checkers: CheckerSet
) -> bool:
    """Checkers with >= 1/3 of stake signed ``provider`` for this job (in any round).

    More than the Byzantine stake, so some honest checker found it eligible: a voter whose
    own (stale) provider view disagrees may follow it rather than split the vote.
    """
    signers = {
        s for by_signer in round_votes.values() for s, ps in by_signer.items() if provider in ps
    }
    return VOUCH_DENOMINATOR * checkers.stake_of_all(signers) >= checkers.total_stake


def adopted_provider(
    round_votes: Mapping[int, Mapping[str, Set[str]]], checkers: CheckerSet, job_id: int
) -> str | None:
    """The provider with the most stake among checkers' latest votes (ties by hash), if any."""
    latest: dict[str, tuple[int, Set[str]]] = {}
    for r, by_signer in round_votes.items():
        for signer, providers in by_signer.items():
            if signer not in latest or r > latest[signer][0]:
                latest[signer] = (r, providers)
    weight: dict[str, int] = {}
    for signer, (_, providers) in latest.items():
        for p in providers:
            weight[p] = weight.get(p, 0) + checkers.stake_of(signer)
    if not weight:
        return None
    return min(weight, key=lambda p: (-weight[p], leader_rank(job_id, p)))


def proposal_for(
    lock: Lock, released: bool, scheduled: str | None, adopted: str | None = None
) -> str | None:
    """What a leader proposes: its locked provider if still bound; else the provider others
    already voted for most (if acceptable to it), so votes converge; else the scheduler's."""
    if lock.provider is not None and not released:
        return lock.provider
    return adopted or scheduled
