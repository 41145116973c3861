"""Writing files safely: never replace a user's file unasked, never leave a half-written one.

Every file the project writes (reports, figures, benchmark results, predictions) goes through
:func:`atomic_write` or :func:`atomic_path`: the data is written to a temporary file in the
target's folder, then moved onto the target with :func:`os.replace`, which is atomic on POSIX and
Windows when both paths are on the same file system. A reader sees the old file or the new one,
never a truncated mix, even if the writer is killed. :func:`check_overwrite` is the one place
that refuses to replace an existing file unless the user said ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "check_overwrite"]


def check_overwrite(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise :class:`FileExistsError` if ``path`` exists and ``overwrite`` is false.

    The message names the file and tells the user to pass ``--overwrite``.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, else delete it.

    For writers that want a file name rather than data, e.g. matplotlib's
    ``fig.savefig(tmp, format="png")`` (give the format: the temporary name ends in ``.tmp``).
    The parent folder is created if missing. The new file keeps the permissions of the file it
    replaces, or gets ``0o644``.

    Args:
        path: the file to write.
        overwrite: if false, raise :class:`FileExistsError` when ``path`` exists (checked
            before anything is written).
    """
    path = Path(path)
    check_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: str | bytes, overwrite: bool = True) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically and return the path.

    Args:
        path: the file to write; its folder is created if missing.
        data: the whole content of the file.
        overwrite: if false, raise :class:`FileExistsError` when ``path`` exists.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (the checksum column of ``checkpoints/MANIFEST``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
