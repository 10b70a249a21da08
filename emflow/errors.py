"""The user's mistakes, as opposed to emflow's bugs.

Every error that names something the user can fix (a config key, an input dataset, an output path)
is a `UserError`: the command line prints its message on one line and exits 2, with nothing
written. Any other exception is a bug in emflow: the command line exits 1, writes the traceback to
a log file and prints one line pointing to it.
"""


class UserError(Exception):
    """Something the user can fix; the message says what and where (key, dataset, box, file)."""


class ConfigError(UserError):
    """A config file is unreadable, names an unknown key, or holds a value of the wrong type or range."""


class InputError(UserError):
    """An input dataset cannot be used: missing, wrong shape, dtype or dimensionality, empty, constant, or invalid values."""


class OutputError(UserError):
    """The output path cannot be used: someone else's data, or results of a different input."""


class UsageError(UserError):
    """A command's arguments do not fit the workflow (an unknown stage, a block out of range, ...)."""


class RunInProgressError(Exception):
    """Another run is working on the same output; not an error of the user's input (exit 75, try later)."""
