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

`check_writable` refuses, before the work, a target that is a folder, a symbolic link or a special
file (a result would replace it with a regular file), and creates nothing; `exclusive` holds a
target's write lock for a whole command, so that a second writer of the same result is refused
instead of replacing it unseen.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """An output path that cannot be written; the message names the path and the reason."""


def cache_dir() -> Path:
    """Where the suite keeps what it can compute again (references, compilation caches): $NIN_CACHE_DIR or
    ~/.cache/nin."""
    return Path(os.environ.get("NIN_CACHE_DIR") or Path.home() / ".cache" / "nin")


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail before the work is done when `path` cannot be written, and create nothing: it must not be
    a folder, a symbolic link or a special file (a FIFO, a device: a result would replace it with a
    regular file, and `/dev/null` replaced as root breaks the machine), every folder above it must be
    a folder or be creatable, and the nearest existing one must accept a new file. The folders are
    made when the file is written (atomic_path), so that a refused command leaves none behind."""
    if isinstance(path, str) and not path.strip():
        raise OutputError(f"{what}: an empty path; give a file name")
    path = Path(path)
    try:
        return _check_writable(path, what)
    except OutputError:
        raise
    except (OSError, ValueError) as e:  # a NUL byte, a permission denied on the way
        raise OutputError(f"{what} {path}: cannot be written: {getattr(e, 'strerror', None) or e}") from None


def _kind(mode: int) -> str | None:
    """What a file that is not a regular one is, in words; None for a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_target(path: Path, what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return  # a file above it: _anchor names it
    kind = _kind(mode)
    if kind == "a directory":
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if kind == "a symbolic link":
        raise OutputError(f"{what} {path} is a symbolic link: writing would replace the link, not what it points "
                          "to; give the path of the file itself")
    if kind:
        raise OutputError(f"{what} {path} is {kind}, not a regular file: writing would replace it with one; "
                          "give the path of a file")
    if not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is not writable")


def _anchor(path: Path, what: str) -> tuple[Path, list[Path]]:
    """(the nearest folder above `path` that exists, the folders below it that do not)."""
    missing = []
    for folder in [path.parent if str(path.parent) else Path("."), *path.parent.parents]:
        try:
            st = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.lexists(folder) and not os.path.exists(folder):
                raise OutputError(f"{what} {path}: {folder} is a symbolic link that leads nowhere") from None
            missing.append(folder)
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OutputError(f"{what} {path}: {folder} is a loop of symbolic links") from None
            raise
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what} {path}: {folder} is a file, not a folder")
        return folder, missing[::-1]
    return Path("."), missing[::-1]


def _temporary_name(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-xxxxxxxx.tmp"  # as atomic_path names it (mkstemp: 8 letters)


def _check_writable(path: Path, what: str) -> Path:
    try:
        os.lstat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{what} {path}: a loop of symbolic links on the way") from None
        if e.errno == errno.ENAMETOOLONG:
            raise OutputError(f"{what} {path}: name too long") from None
    _check_target(path, what)
    anchor, missing = _anchor(path, what)
    try:
        longest = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    for name in [m.name for m in missing] + [_temporary_name(path)]:
        if len(os.fsencode(name)) > longest:
            raise OutputError(f"{what} {path}: name too long ({len(os.fsencode(name))} bytes with the "
                              f"temporary file's dot and suffix; at most {longest} here)")
    try:  # the one sure test: make (and remove) a file where the first missing folder, or the file, goes
        fd, probe = tempfile.mkstemp(prefix=f".{path.name[:40]}.{os.getpid()}-", suffix=".tmp", dir=anchor)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write in {anchor}: {e.strerror or e}") from None
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create its folder {path.parent}: {e.strerror or e}") from None
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


def lock_path(path: str | Path) -> Path:
    """The lock file of `path`: `.<name>.lock.tmp` beside it (ignored by git as a temporary; it holds
    no digits where stale_temporaries looks for a pid, so that it is never taken for one)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock.tmp"


def _take(lock: Path) -> int | None:
    """An open descriptor of `lock` holding its flock, or None when another holder has it."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file as we opened it: lock the one on disk
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the write lock of `path` for the block: a second writer of the same path (another `nin`,
    or another thread of this one) is refused at once with OutputError naming the path and the
    holder, instead of both running and one result replacing the other unseen. The lock is an
    flock on lock_path(path), which the kernel releases when its holder ends, even by kill -9. The
    folders made for it, and the lock file, are removed afterwards when nothing else was written
    there: a refused or failed command leaves no empty folder behind."""
    path = check_writable(path, what)
    _, missing = _anchor(path, what)
    for folder in missing:
        folder.mkdir(exist_ok=True)
    lock = lock_path(path)
    fd = _take(lock)
    if fd is None:
        try:
            holder = lock.read_text().strip() or "?"
        except OSError:
            holder = "?"
        _remove_empty(missing)
        raise OutputError(f"{what} {path}: another command (pid {holder}) is writing it now; wait for it to "
                          f"finish, or give another {what}")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        _remove_empty(missing)


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):  # the deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty (the result is there), or gone: keep what is there
            return
