"""Errors a user can cause and fix. The CLI prints their message on one line, exit 2."""


class UserError(Exception):
    """Bad flag, missing file, wrong password, bad config, unreachable RPC, ..."""
