"""One atomic writer for every file the harness produces (records, embeddings, artifacts).

A file is written under a temporary name in its folder, fsync'd and renamed into place, and the
folder is fsync'd after the rename, so Ctrl-C, kill -9, a full disk or a power cut leaves either
the previous state or the complete new file, never a torn one; the temporary file is removed on
any failure. ``user_error_on_oserror`` turns a failed write (ENOSPC, EDQUOT, EROFS, EACCES) into
one line naming the file, for the call sites that write the results store.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then rename it to ``path``.

    The temporary name keeps the final suffix (``.x.tmp-abc.h5ad``) because some writers
    (anndata, numpy) dispatch on it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    tmp_path = Path(tmp)
    try:
        os.close(fd)
        writer(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; a results file or a report is meant to be shared like any
        # file the user's umask allows
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a crash only once its folder is on disk
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder (its entries: a rename or a new file). A file system or platform that cannot
    open or fsync a folder (Windows, some network mounts) is skipped: the file itself is synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


_HINTS = {getattr(errno, name): hint for name, hint in (
    ("ENOSPC", "the disk is full: free space there and run again"),
    ("EDQUOT", "the disk quota is exceeded: free space there and run again"),
    ("EROFS", "the file system is read-only: choose a writable --results-dir"),
    ("EACCES", "permission denied: choose a --results-dir you can write to"),
    ("EPERM", "permission denied: choose a --results-dir you can write to"),
    ("EIO", "an I/O error: check the disk"),
) if hasattr(errno, name)}


@contextlib.contextmanager
def user_error_on_oserror(path: str | os.PathLike, what: str = "results store") -> Iterator[None]:
    """An OSError writing ``path`` (disk full, quota, read-only, ...) as one line naming it, instead
    of a traceback. ``atomic_write`` has left the previous file as it was and no temporary file."""
    try:
        yield
    except OSError as exc:
        from flag_bench.errors import UserError

        why = _HINTS.get(exc.errno or -1) or (exc.strerror or type(exc).__name__)
        name = errno.errorcode.get(exc.errno or -1, "")
        raise UserError(f"{what}: cannot write {path} ({name + ': ' if name else ''}{why}); nothing was "
                        "half-written and the previous file is intact") from None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import: os.umask can only be read by setting it, which would race with threads
# creating files later
_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    return atomic_write_bytes(path, text.encode())
