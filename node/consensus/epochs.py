"""Epochs: fixed-length periods over which the checker set and committees are fixed.

The epoch number comes from chain time (block timestamp) or block height; the epoch
seed comes from the chain (a block hash at the epoch boundary) or, without a chain,
from the previous epoch's seed. It is mixed with the epoch number so a seed is never
reused across epochs.
"""

from __future__ import annotations

from eth_utils import keccak

EPOCH_LENGTH_SECONDS = 600
EPOCH_LENGTH_BLOCKS = 50
GENESIS_SEED = keccak(b"kaisar/genesis-seed")


def epoch_at_time(genesis_time: int, now: float, length: int = EPOCH_LENGTH_SECONDS) -> int:
    """Epoch containing ``now`` (seconds); times before genesis are epoch 0."""
    if length <= 0:
        raise ValueError("epoch length must be positive")
    return max(0, int(now - genesis_time) // length)


def epoch_at_block(block: int, length: int = EPOCH_LENGTH_BLOCKS) -> int:
    if length <= 0 or block < 0:
        raise ValueError("epoch length must be positive and block non-negative")
    return block // length


def epoch_start_block(epoch: int, length: int = EPOCH_LENGTH_BLOCKS) -> int:
    """The block whose hash seeds ``epoch`` (the epoch's first block)."""
    return epoch * length


def epoch_seed(epoch: int, randomness: bytes) -> bytes:
    """Seed of ``epoch`` from chain randomness (a block hash) or the previous seed."""
    if len(randomness) != 32:
        raise ValueError("epoch randomness must be 32 bytes")
    return keccak(b"kaisar/epoch-seed" + epoch.to_bytes(32, "big") + randomness)


def seed_chain(epoch: int, genesis_seed: bytes = GENESIS_SEED) -> bytes:
    """Chainless seed: epoch 0 from genesis, each next epoch from the previous seed."""
    seed = genesis_seed
    for e in range(epoch + 1):
        seed = epoch_seed(e, seed)
    return seed
