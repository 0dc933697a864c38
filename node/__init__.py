"""Kaisar node: providers, checkers, light client and explorer of a decentralized GPU network."""

__version__ = "0.1.0"
