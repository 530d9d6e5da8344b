"""Exceptions that separate the user's mistakes from our bugs.

The CLI turns a `UserError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a parameter value, a missing folder, an unwritable output path."""


class NumericalError(RuntimeError):
    """The computation produced NaN/Inf latents or black frames, usually a reduced-precision overflow."""
