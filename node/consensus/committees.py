"""Per-provider PoPW committees: which checkers challenge which provider in an epoch.

Checkers are ranked by ``keccak(seed, provider, checker)``; the committee is the first
``COMMITTEE_SIZE``. Everyone computes the same committee from the same seed, and no
checker can choose to be on (or off) a provider's committee.
"""

from __future__ import annotations

from eth_utils import keccak, to_canonical_address

from node.consensus.checkers import CheckerSet

COMMITTEE_SIZE = 7


def committee_rank(seed: bytes, provider: str, checker: str) -> bytes:
    return keccak(seed + to_canonical_address(provider) + to_canonical_address(checker))


def get_popw_committee(
    checkers: CheckerSet, seed: bytes, provider: str, size: int = COMMITTEE_SIZE
) -> CheckerSet:
    """The ``size`` lowest-ranked checkers (all of them if the set is smaller)."""
    ranked = sorted(checkers.addresses, key=lambda c: committee_rank(seed, provider, c))
    return checkers.subset(ranked[:size])


def is_committee_member(
    checkers: CheckerSet, seed: bytes, provider: str, checker: str, size: int = COMMITTEE_SIZE
) -> bool:
    return checker in get_popw_committee(checkers, seed, provider, size)


def may_sign_popw_vote(previous: tuple[int, bytes] | None, verdict: int, gpu_class: bytes) -> bool:
    """At most one (verdict, class) per (epoch, provider): ``previous`` is what this
    checker already signed for that subject (``VoteStore.popw_vote``), if anything."""
    return previous is None or previous == (verdict, gpu_class)
