"""Errors a user can act on. The command line shows these as one line; anything else is a bug and
keeps its traceback."""


class UserError(Exception):
    """Something the user can fix; the message says what (and, for a file, where)."""


class DataError(UserError, ValueError):
    """A user's data file is unusable; the message names the file, line and field."""


class ConfigError(UserError, ValueError):
    """Settings that cannot work, alone or together."""


class MissingDependency(UserError, ImportError):
    """An optional package is needed; the message gives the command that installs it."""
