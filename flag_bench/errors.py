"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class UserError(Exception):
    """Bad input a user can fix. The message names the thing and the fix."""

    exit_code = 2


class CellFailure(RuntimeError):
    """A single grid cell failed for a reason inside the method (NaN loss, bad output, ...)."""
