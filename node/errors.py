"""Errors a user can cause and fix. The CLI prints their message on one line, exit 2."""


class UserError(Exception):
    """Bad flag, missing file, wrong password, bad config, unreachable RPC, ..."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, however deeply trio/py-libp2p nested the groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError inside ``exc``, also when trio wrapped it in an exception group."""
    return next((e for e in leaves(exc) if isinstance(e, UserError)), None)
