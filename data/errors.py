"""The one error type of the data layer: a user-facing, one-line message."""


class DataError(ValueError):
    """Bad input data: the message names the file, key or value and what is allowed."""
