"""Writing files so that a reader only ever sees the old file or the new one, never half of one.

Every file the suite writes (records, matrices, benchmark results, checkpoints, reports) goes
through `atomic_write`: the bytes go to a temporary file in the same folder (same file system, so
the final rename is atomic), are flushed to disk, and only then replace the target. On any error,
and on SIGINT / SIGTERM (Python raises KeyboardInterrupt / SystemExit in the writing thread), the
temporary file is removed. After kill -9 a temporary may remain: its name starts with the target's
and ends in `.tmp`, and `.gitignore` ignores it; the target itself is never half-written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """An output path that cannot be written; the message names the path and the reason."""


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail before the work is done when `path` cannot be written: its folder must exist or be
    creatable, it must not be a folder itself, and the folder must accept a new file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot create its folder {parent}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, it replaces `path` atomically."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
