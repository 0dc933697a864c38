"""Assignment rounds: leaders, timeouts and the two-step vote rule, as pure functions.

Job J is decided in rounds r = 0, 1, ... The leader of (J, r) is the r-th checker in
the order ``keccak(J, checker)``. A round has two voting steps, as in Tendermint:

- the leader's **proposal** is its own ``AssignPrevote(J, r, P)``, carrying the
  highest ``PrepareQC`` it knows as justification (``justify``);
- a checker **prevotes** P if ``may_prevote`` holds and sends it to the leader;
- >= 2/3 of stake prevoting P in r is a ``PrepareQC(J, r, P)``, which the leader
  gossips; a checker that sees it **precommits**: it signs ``AssignVote(J, r, P)``
  (the on-chain vote) if ``may_precommit`` holds, and is then *locked* on (P, r);
- >= 2/3 of stake precommitting is the ``AssignQC`` the chain and the provider check.

Votes go to the leader only (linear messages); the leader gossips the two certificates.

The rules (``Lock`` is a checker's own history for J, kept durable by ``VoteStore``):

1. rounds only go forward: no vote in a round below one already voted in;
2. at most one prevote and one precommit per (J, r), no prevote after the precommit;
3. nothing after a QC for J is known (DESIGN section 7);
4. precommit P in r only with a PrepareQC(J, r, P);
5. prevote only the locked provider, unless the proposal's justify is a PrepareQC for
   its provider from a round >= the lock's round.

Safety (Byzantine stake B < T/3, quorum >= 2T/3): let r0 be the lowest round with an
AssignQC, for A, and H its honest signers: stake(H) >= 2T/3 - B > T/3.
- No PrepareQC for another provider in r0: two polkas in one round overlap in an
  honest checker who prevoted twice (rule 2).
- Let r > r0 be the lowest round with a PrepareQC for some X != A. Its prevoters
  (>= 2T/3) overlap H (> T/3) in some h. By rules 1-2 h prevoted in r after its
  precommit in r0 and before any precommit in r, so its lock then was a PrepareQC of a
  round in [r0, r): for A. By rule 5 h
  prevoted X only with a justify PrepareQC(X, r') with lock round <= r' < r: none
  exists. So every PrepareQC from r0 on is for A.
- An AssignQC for B != A in r > r0 needs an honest precommit (2T/3 > B), which needs
  PrepareQC(B, r) (rule 4): none. In r0 itself, a second AssignQC needs an honest
  double precommit (rule 2). One provider per job.

Liveness (after the network settles): a checker whose round times out sends its
highest known PrepareQC to the next leader; a leader of round r > 0 waits
``propose_wait(r)`` before proposing, so its justify is at least every honest lock
and every honest checker can prevote its proposal (rule 5). The Byzantine split that
stalled the one-step protocol (an equivocating leader splitting honest locks while
Byzantine voters withhold) cannot stall this one: locks move to a later polka.
A checker that fell behind (restarted, paused) skips to round R once leaders holding
> 1/3 of stake proposed in rounds >= R (``AssignmentMachine._skip_rounds``, as in
Tendermint): some honest checker is there, so Byzantine leaders cannot pull anyone ahead
of every honest checker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from eth_utils import keccak, to_canonical_address

from node.consensus.checkers import CheckerSet

ROUND_TIMEOUT_SECONDS = 2.0
# Timeouts double each round up to this factor (partial synchrony: eventually long enough).
ROUND_TIMEOUT_MAX_FACTOR = 8
# A leader of round r > 0 waits round_timeout(r) / PROPOSE_WAIT_DIVISOR before proposing.
PROPOSE_WAIT_DIVISOR = 4


@dataclass(frozen=True)
class Lock:
    """A checker's own voting history for one job (persisted by ``VoteStore``)."""

    provider: str | None = None  # provider of the latest precommit (the lock), None if none
    round: int = -1  # round of the latest precommit (the PrepareQC it is locked on)
    precommitted: frozenset[int] = frozenset()  # rounds with an own AssignVote
    prevoted: frozenset[int] = frozenset()  # rounds with an own AssignPrevote
    qc_seen: bool = False

    @property
    def last_round(self) -> int:
        """The highest round this checker voted in (-1 if none): rule 1's floor."""
        return max(self.round, max(self.prevoted, default=-1))


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


def propose_wait(round_: int, base: float = ROUND_TIMEOUT_SECONDS) -> float:
    """How long the leader of round ``round_`` > 0 collects other checkers' PrepareQCs
    (sent when their previous round timed out) before proposing. Round 0 has no locks."""
    return 0.0 if round_ == 0 else round_timeout(round_, base) / PROPOSE_WAIT_DIVISOR


def may_prevote(lock: Lock, round_: int, provider: str, justify_round: int | None = None) -> bool:
    """The prevote rule: may this checker prevote (J, round_, provider) now?

    ``justify_round`` is the round of the proposal's PrepareQC for ``provider`` (already
    verified), or None if the proposal has none.
    """
    # Rounds only go forward
    if round_ < lock.last_round:
        return False
    # At most one prevote per (job, round), and none after precommitting in it
    if round_ in lock.prevoted or round_ in lock.precommitted:
        return False
    # After seeing a QC for the job, sign nothing else for it
    if lock.qc_seen:
        return False
    # Only the locked provider, unless a polka from the lock's round or later justifies another
    return (
        lock.provider is None
        or lock.provider == provider
        or (justify_round is not None and lock.round <= justify_round < round_)
    )


def may_precommit(lock: Lock, round_: int) -> bool:
    """The precommit rule, given a verified PrepareQC(J, round_, P): may this checker sign
    the on-chain AssignVote(J, round_, P) now?"""
    # Rounds only go forward (no precommit in a round below a prevote already sent)
    if round_ < lock.last_round:
        return False
    # At most one precommit per (job, round)
    if round_ in lock.precommitted:
        return False
    # After seeing a QC for the job, sign nothing else for it
    return not lock.qc_seen


def record_prevote(lock: Lock, round_: int) -> Lock:
    return replace(lock, prevoted=lock.prevoted | {round_})


def record_precommit(lock: Lock, round_: int, provider: str) -> Lock:
    """The lock after precommitting (J, round_, provider): rounds only go forward, so the
    latest precommit is the highest-round PrepareQC this checker is locked on."""
    latest = round_ >= lock.round
    return replace(
        lock,
        provider=provider if latest else lock.provider,
        round=max(round_, lock.round),
        precommitted=lock.precommitted | {round_},
    )


def record_qc_seen(lock: Lock) -> Lock:
    return replace(lock, qc_seen=True)


def higher_justify(a: Any, b: Any) -> Any:
    """The PrepareQC of the higher round (either may be None); ties keep ``a``."""
    if b is None or (a is not None and a.round >= b.round):
        return a
    return b


def proposal_for(high_qc_provider: str | None, scheduled: str | None) -> str | None:
    """What a leader proposes: the provider of the highest PrepareQC it knows (which
    every honest lock allows, see the module docstring), else the scheduler's choice."""
    return high_qc_provider or scheduled
