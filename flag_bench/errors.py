"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class UserError(Exception):
    """Bad input a user can fix. The message names the thing and the fix."""

    exit_code = 2


class CellFailure(RuntimeError):
    """A single grid cell failed for a reason inside the method (NaN loss, bad output, ...)."""


def one_line(message: str, n: int = 300) -> str:
    """The first line of a message, cut to n characters (a table cell, an MLflow tag, an error
    quoting another program's output)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= n else first[: n - 3] + "..."
