"""Errors a user can cause and fix. The CLI prints their message on one line, exit 2."""


class UserError(Exception):
    """Bad flag, missing file, wrong password, bad config, unreachable RPC, ..."""


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError inside ``exc``, also when trio wrapped it in an exception group."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_user_error(inner)
            if found is not None:
                return found
    return None
