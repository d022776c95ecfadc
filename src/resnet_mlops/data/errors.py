"""The one exception type for bad input data."""


class DataError(Exception):
    """Bad input a user can fix: the message is one line naming the file and the problem."""
