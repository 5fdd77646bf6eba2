"""The one error type of the data layer: a user-facing, one-line message."""
from mtlsweep.config.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, key or value and what is allowed."""
