"""The light client's errors: each says what is wrong and what to do next.

All are ``UserError``s, so the CLI prints the message on one line and exits 2.
"""

from __future__ import annotations

from node.errors import UserError


class ClientError(UserError):
    """Bad input or a state the user can act on (unknown job, not the owner, ...)."""


class NoProviderFits(ClientError):
    """``buy`` refused before paying: no fresh ad can take the job."""


class WaitTimeout(ClientError):
    """``wait_deployed`` ran out of time; the message names the missing step."""


class VerificationFailed(ClientError):
    """A deployment claim did not verify (QC, provider signature, digest, ...)."""


class JobEnded(ClientError):
    """The job is closed, done, failed or expired on chain."""
