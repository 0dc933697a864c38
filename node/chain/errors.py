"""The chain layer's errors. All are UserErrors: the CLI prints one line, exit 2."""

from __future__ import annotations

from node.errors import UserError


class ChainError(UserError):
    """Something about the chain a user can act on (RPC, funds, deployment)."""


class ChainUnavailable(ChainError):
    """The RPC endpoint cannot be reached or answered nonsense."""


class InsufficientFunds(ChainError):
    """The sending account cannot pay value + gas."""


class DeploymentMismatch(ChainError):
    """A deployment file does not describe the chain it is used with."""


class ChainRevert(ChainError):
    """A call or transaction reverted; ``reason`` is the contract's message."""

    def __init__(self, reason: str, *, function: str = "") -> None:
        self.reason = reason
        self.function = function
        where = f"{function}: " if function else ""
        super().__init__(f"transaction reverted: {where}{reason}")
