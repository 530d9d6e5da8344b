"""Exceptions that separate the user's mistakes from our bugs.

The CLI turns a `UserError` into one line on stderr and exit code 2, a `NumericalError` into exit code 3; anything
else is a bug and keeps its traceback. Catch `T2vFastError` to handle both.
"""


class T2vFastError(Exception):
    """Base of every error t2v-fast raises on purpose."""


class UserError(T2vFastError):
    """Bad input from the user: a parameter value, a missing folder, an unwritable output path."""


class NumericalError(T2vFastError, RuntimeError):
    """The computation produced NaN/Inf latents or black frames, usually a reduced-precision overflow."""
