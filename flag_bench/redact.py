"""Credentials out of everything flag-bench prints or writes (issue 23).

A tracking URI may carry a password (``postgresql+psycopg2://user:PW@host/db``,
``https://user:PW@mlflow.example``) or a token in its query (``?password=...``, ``?token=...``).
flag-bench connects with the URI as given, but everything it prints or writes (the run's
summary, warnings and errors, the ``cells/<id>.mlflow`` markers, SLURM submissions, the report's
rerun command) holds ``redact_uri(uri)``: ``user:***@host``, ``token=***``.

A URI read back from a file is the redacted one, so ``connectable`` gives the URI to connect
with: the redacted URI's credential comes from the environment (``MLFLOW_TRACKING_URI`` holding
the full URI; ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for an http(s) server;
``PGPASSWORD`` or a ``~/.pgpass`` file for PostgreSQL), or a one-line error names the fix; ``***``
is never sent as a password. The recommended form is a URI without a password plus those
variables (README, "Credentials").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import overload
from urllib.parse import unquote

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# query parameters of a URI whose value is a secret
_SECRET_KEY = re.compile(r"password|passwd|^pwd$|token|secret|api_?key|credential", re.IGNORECASE)
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# ``password=...`` pairs in a message: only these names (a method's ``token_dim=64`` stays as it is)
_PAIR_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_.\-])((?:ssl|pg)?password|passwd|pwd|(?:access_|auth_|api_)?token|"
                           r"(?:client_)?secret|api_?key)(\s*=\s*)([^\s&;,'\"<>)]+)", re.IGNORECASE)


def _parts(uri: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password or None, the rest after '@' or after the scheme) of a URI with an
    authority; None for anything else (a path, ``sqlite:///...`` has an empty one)."""
    m = _SCHEME.match(uri)
    if not m:
        return None
    head, rest = m.group(0), uri[m.end():]
    # the userinfo ends at the last '@' of the authority (RFC 3986) or, as SQLAlchemy reads a URL,
    # at the first '@' after ``user:`` (a password may hold a raw '/', '?' or '#'): whichever is
    # later, so no part of a password is left showing
    ends = []
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        ends.append(authority.rfind("@"))
    sa = re.match(r"[^:/@?#]*:[^@]*@", rest)
    if sa:
        ends.append(sa.end() - 1)
    if not ends:
        return head, "", None, rest
    end = max(ends)
    user, colon, password = rest[:end].partition(":")
    return head, user, password if colon else None, rest[end + 1:]


def _redact_query(rest: str) -> str:
    path, q, query = rest.partition("?")
    if not q:
        return rest
    query, hash_, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if eq and value and _SECRET_KEY.search(unquote(key)) else pair)
    return f"{path}?{'&'.join(pairs)}{hash_}{fragment}"


@overload
def redact_uri(uri: str) -> str: ...
@overload
def redact_uri(uri: None) -> None: ...
def redact_uri(uri: str | None) -> str | None:
    """``uri`` with its password and secret query values replaced by ``***``; the user name,
    host, port and path stay (they say which server). Anything that is not a URI (a path) comes
    back unchanged; None stays None."""
    if not uri:
        return uri
    parts = _parts(uri)
    if parts is None:
        return uri
    head, user, password, rest = parts
    if password is None:
        userinfo = f"{user}@" if user or uri[len(head):].startswith("@") else ""
    else:
        userinfo = f"{user}:{MASK if password else ''}@"
    return f"{head}{userinfo}{_redact_query(rest)}"


def secrets_of(uri: str | None) -> list[str]:
    """The secret strings a URI holds (its password, secret query values), as written and decoded."""
    parts = _parts(uri) if uri else None
    if parts is None:
        return []
    _, _, password, rest = parts
    found = [password] if password and password != MASK else []
    query = rest.partition("?")[2].partition("#")[0]
    for pair in query.split("&") if query else ():
        key, eq, value = pair.partition("=")
        if eq and value and value != MASK and _SECRET_KEY.search(unquote(key)):
            found.append(value)
    out = []
    for s in found:
        for v in (s, unquote(s), unquote(s.replace("+", " "))):
            if v and v not in out:
                out.append(v)
    return out


def redact_text(text: str, *uris: str | None) -> str:
    """A message (an error from MLflow, SQLAlchemy or requests) with every URI in it redacted,
    ``password=...``-style pairs masked, and the secrets of ``uris`` masked wherever they appear."""
    if not text:
        return text
    out = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    out = _PAIR_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}" if m.group(3) != MASK else m.group(0), out)
    for uri in uris:
        for secret in sorted(secrets_of(uri), key=len, reverse=True):
            if len(secret) >= 3:  # a one- or two-character password would mask every such letter
                out = out.replace(secret, MASK)
    return out


def is_redacted(uri: str | None) -> bool:
    """A URI whose password (or a secret query value) is the ``***`` of ``redact_uri``."""
    parts = _parts(uri) if uri else None
    if parts is None:
        return False
    query = parts[3].partition("?")[2].partition("#")[0]
    return parts[2] == MASK or any(p.partition("=")[2] == MASK for p in query.split("&") if query)


def without_password(uri: str) -> str:
    """The URI with no password (user name kept): the client then reads it from the environment."""
    parts = _parts(uri)
    if parts is None or parts[2] is None:
        return uri
    head, user, _, rest = parts
    return f"{head}{user}@{rest}" if user else f"{head}{rest}"


def _pgpass() -> Path | None:
    path = Path(os.environ["PGPASSFILE"]) if os.environ.get("PGPASSFILE") else Path.home() / ".pgpass"
    return path if path.is_file() else None


def connectable(uri: str) -> str:
    """The URI to connect with. A URI as the user gave it comes back unchanged; a redacted one
    (read back from a marker or a SLURM submission, or pasted from flag-bench's output) gets its
    credential from the environment, else a UserError names the fix."""
    if not is_redacted(uri):
        return uri
    from flag_bench.errors import UserError

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and not is_redacted(env) and redact_uri(env) == uri:
        return env
    scheme = uri.partition(":")[0].lower()
    bare = without_password(uri)
    has_secret_query = redact_uri(bare) != bare
    if scheme in ("http", "https"):
        if not has_secret_query and os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            return bare
        fix = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    elif scheme.startswith("postgres"):
        if not has_secret_query and (os.environ.get("PGPASSWORD") or _pgpass()):
            return bare
        fix = "set PGPASSWORD or put the password in ~/.pgpass (PGPASSFILE)"
    else:
        fix = "set MLFLOW_TRACKING_URI to the full URI"
    raise UserError(f"tracking URI {uri}: its password is hidden (***), flag-bench never stores it; pass "
                    f"--tracking-uri with the real credential, or use {redact_uri(bare)} and {fix} "
                    "(README: Credentials)")
