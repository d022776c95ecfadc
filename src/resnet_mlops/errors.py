"""The errors a user can cause and fix, under one base the CLI reports in one line."""


class UserError(Exception):
    """Bad input or a refused action: the message is one line naming the file, key or value.

    The CLI catches this base alone (``error: <message>`` on stderr, exit ``exit_code``);
    anything else is a bug and keeps its traceback.
    """

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A params problem; the message names the file and the key. Exit 2, like a usage error."""

    exit_code = 2


class DataError(UserError):
    """Bad input data: the message names the file and the problem."""
