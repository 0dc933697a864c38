"""The checker set: who may vote, and with how much stake.

The set comes from the chain (Staking contract: a license holder with stake >=
``MIN_CHECKER_STAKE`` and a registered node key). A static list is accepted only as
the devnet's genesis data. Every quorum rule weighs signatures by the stake recorded
here, so a ``CheckerSet`` is fixed for one epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from eth_utils import is_address, to_checksum_address

# Smallest stake (wei) that makes a registered license holder an active checker.
MIN_CHECKER_STAKE = 1
# Upper bound on the size of the set; a quorum certificate carries one signature per member.
MAX_CHECKERS = 256


class CheckerSetError(ValueError):
    """A checker list that cannot be a valid set (duplicate, bad address, no stake)."""


@dataclass(frozen=True)
class Checker:
    address: str  # checksummed node-key address, the one ecrecover returns
    stake: int  # wei


@dataclass(frozen=True)
class ChainCheckerRecord:
    """One row of the Staking contract's checker view, before the activity rule."""

    address: str
    stake: int
    has_license: bool
    registered: bool


@dataclass(frozen=True)
class CheckerSet:
    """Active checkers of one epoch, sorted by address; stake weights for quorums."""

    checkers: tuple[Checker, ...]
    _stake: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stake", {c.address: c.stake for c in self.checkers})

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(c.address for c in self.checkers)

    @property
    def total_stake(self) -> int:
        return sum(c.stake for c in self.checkers)

    def __contains__(self, address: object) -> bool:
        return address in self._stake

    def __len__(self) -> int:
        return len(self.checkers)

    def stake_of(self, address: str) -> int:
        """Stake of one member; 0 for an address outside the set."""
        return self._stake.get(address, 0)

    def stake_of_all(self, addresses: Iterable[str]) -> int:
        """Stake of the distinct members among ``addresses`` (outsiders weigh 0)."""
        return sum(self.stake_of(a) for a in set(addresses))

    def subset(self, addresses: Iterable[str]) -> CheckerSet:
        wanted = set(addresses)
        return CheckerSet(tuple(c for c in self.checkers if c.address in wanted))


def is_active_checker(record: ChainCheckerRecord, min_stake: int = MIN_CHECKER_STAKE) -> bool:
    """A checker votes only with a license, enough stake and a registered node key."""
    return record.has_license and record.registered and record.stake >= min_stake


def make_checker_set(entries: Iterable[tuple[str, int]]) -> CheckerSet:
    """Validated, address-sorted set from (address, stake) pairs."""
    checkers: dict[str, Checker] = {}
    for address, stake in entries:
        # Every member has a well-formed address
        if not isinstance(address, str) or not is_address(address):
            raise CheckerSetError(f"not an address: {address!r}")
        canonical = to_checksum_address(address)
        # No member appears twice (its stake would count twice)
        if canonical in checkers:
            raise CheckerSetError(f"duplicate checker {canonical}")
        # Every member has positive stake
        if not isinstance(stake, int) or isinstance(stake, bool) or stake <= 0:
            raise CheckerSetError(f"checker {canonical} needs a positive integer stake")
        checkers[canonical] = Checker(canonical, stake)
    # The set is neither empty nor larger than a certificate can carry
    if not 0 < len(checkers) <= MAX_CHECKERS:
        raise CheckerSetError(f"a checker set has 1..{MAX_CHECKERS} members, not {len(checkers)}")
    return CheckerSet(tuple(sorted(checkers.values(), key=lambda c: c.address.lower())))


def checker_set_from_chain(
    records: Iterable[ChainCheckerRecord], min_stake: int = MIN_CHECKER_STAKE
) -> CheckerSet:
    """The active set from the Staking contract's view (license + stake + node key)."""
    return make_checker_set(
        (r.address, r.stake) for r in records if is_active_checker(r, min_stake)
    )


def checker_set_from_genesis(entries: Iterable[dict]) -> CheckerSet:
    """Devnet only: the static genesis list ``[{address, stake}, ...]`` from config."""
    try:
        pairs = [(e["address"], e["stake"]) for e in entries]
    except (KeyError, TypeError) as exc:
        raise CheckerSetError("genesis checkers need 'address' and 'stake'") from exc
    return make_checker_set(pairs)
