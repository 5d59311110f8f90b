"""Writing files so that a reader only ever sees the old file or the new one, never half of one.

Every file the suite writes (records, matrices, benchmark results, checkpoints, reports) goes
through `atomic_path`: the bytes go to a temporary file in the same folder (same file system, so
the final rename is atomic), are flushed to disk, and only then replace the target. On any error,
and on an interruption that unwinds (Ctrl-C; SIGTERM and SIGHUP where the process turns them into
an exception, as the `nin` command and its workers do: harness.processes.sigterm_unwinds), the
temporary file is removed. Nothing can run on kill -9: the temporary
(`.<target name>.<writer's pid>-<random>.tmp`, ignored by `.gitignore`) stays until the next write
of the same target removes it, once its writer's process is gone. The target itself is never
half-written: a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import glob
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
    try:
        return _check_writable(path, what)
    except OutputError:
        raise
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links
        raise OutputError(f"{what} {path}: cannot be written: {getattr(e, 'strerror', None) or e}") from None


def _check_writable(path: Path, what: str) -> Path:
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    blocking = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{what} {path}: {blocking} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot create its folder {parent}: {e.strerror or e}") from None
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is not writable")
    try:  # the one sure test: make (and remove) the temporary that atomic_path will make
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError, ValueError, OverflowError):  # another user's process, or no os.kill
        return True
    return True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of `path` whose writer's process no longer runs (it was killed with kill -9)."""
    path = Path(path)
    prefix = f".{path.name}."
    out = []
    for tmp in Path(path.parent).glob(glob.escape(prefix) + "*.tmp"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(tmp)
    return out


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove what a killed writer of `path` left behind; returns the files removed."""
    removed = []
    for tmp in stale_temporaries(path):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, it replaces `path` atomically.
    On any exception, KeyboardInterrupt included, the temporary is removed."""
    path = check_writable(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
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
    _sync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
