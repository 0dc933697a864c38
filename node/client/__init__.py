"""The light client: buy, wait (and verify), connect, logs, close. See docs/CLIENT.md."""

from node.client.errors import (
    ClientError,
    JobEnded,
    NoProviderFits,
    VerificationFailed,
    WaitTimeout,
)

__all__ = [
    "ClientError",
    "JobEnded",
    "NoProviderFits",
    "VerificationFailed",
    "WaitTimeout",
]
