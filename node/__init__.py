"""Kaisar node: providers, checkers, light client and explorer of a decentralized GPU network."""

import os

__version__ = "0.1.0"

# keccak via pysha3 is ~10x faster than eth-hash's default pycryptodome backend, and
# keccak dominates signature checking of every gossip message (EIP-712 digests,
# addresses). Must be set before eth_hash is first imported.
os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")
