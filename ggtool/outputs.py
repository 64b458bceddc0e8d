"""Writing outputs without losing anything: never over an input, always beside the destination and renamed
when complete, unique temporary names, leftovers of killed runs cleaned up, folders created only for output
removed again when the run fails, and environment errors (full disk, read-only, no permission) as one line.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import re
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import GgtoolError

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:\.[0-9a-f]+)?\.partial$")


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same path once symlinks are resolved, or the same inode (hard
    links, bind mounts)."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(dest: Path | str, inputs: Iterable[tuple[str, Path | str | None]] | Iterable[Path | str]) -> None:
    """Refuse to write `dest` if it is (or resolves to) one of the command's inputs. `inputs` holds paths or
    (what, path) pairs; `what` ("the model", "the calibration text"...) goes into the message."""
    dest = Path(dest)
    for item in inputs:
        what, path = item if isinstance(item, tuple) else ("one of the inputs", item)
        if path is not None and same_file(dest, Path(path)):
            shown = what if Path(path) == dest else f"{what} ({path})"
            raise GgtoolError(f"{dest}: is {shown}; writing there would destroy it",
                              "choose an output path that is not one of the command's inputs")


def check_destination(dest: Path, inputs: Iterable = (), example: str | None = None) -> None:
    """Refuse an output whose folder is missing, that is a folder, or that would overwrite one of the inputs
    (`example`: a file name to suggest instead of a folder)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise GgtoolError(f"{dest.parent}: output folder does not exist", "create it first or choose another -o")
    if dest.is_dir():
        raise GgtoolError(f"{dest}: is a folder",
                          f"pass a file name such as {example}" if example else "pass a file name")
    refuse_inputs(dest, inputs)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(dest: Path) -> list[Path]:
    """Remove temporary files of `dest` left by a run that was killed (its process no longer exists), with a
    warning naming each; those of a run still going are left alone."""
    dest = Path(dest)
    removed = []
    with contextlib.suppress(OSError):
        for p in dest.parent.glob(f".{glob_escape(dest.name)}.*.partial"):
            m = _PARTIAL.match(p.name)
            if not m or m["name"] != dest.name or _pid_alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
                warnings.warn(f"removed {p}, left by an interrupted earlier run (process {m['pid']})", stacklevel=2)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def partial_name(dest: Path) -> Path:
    """A temporary name beside `dest`, unique to this process and call: `.NAME.PID.RANDOM.partial`."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


@contextlib.contextmanager
def atomic_output(dest: Path | str) -> Iterator[Path]:
    """A temporary path beside `dest` (created empty here, so a read-only or full folder fails at once with
    its path), renamed to `dest` only if the block completes, removed on every other way out."""
    dest = Path(dest)
    clean_leftovers(dest)
    tmp = partial_name(dest)
    ours = True
    try:  # created inside the try: a Ctrl-C right after the file appears still removes it
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another writer's file (PID and random suffix make it unlikely): leave it
            ours = False
            raise
        os.close(fd)
        yield tmp
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno is None and _nearly_full(dest.parent):  # numpy's short write: "N requested and M written"
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest)) from None
        # a failed write() names no file, and an error on the temporary file is one on the file being written
        if e.errno is not None and ours and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(dest)) from None
        raise
    finally:
        if ours:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


@contextlib.contextmanager
def output_folder(folder: Path | str, parents: bool = False) -> Iterator[Path]:
    """`folder`, created if missing; if this call created it (or, with `parents`, its parents) and the block
    fails, the folders it created are removed again when empty."""
    folder = Path(folder)
    created = []
    p = folder
    while not p.exists():
        created.append(p)
        if not parents or p.parent == p:
            break
        p = p.parent
    if not parents and not folder.parent.is_dir():
        raise GgtoolError(f"{folder.parent}: folder does not exist", "create it first or choose another -o")
    folder.mkdir(parents=parents, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def removes_created_folder(arg: str) -> Callable:
    """Decorator: if the call fails, the output folder named by its argument `arg` is removed again when the call
    created it (it did not exist before) and it is empty."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            folder = Path(sig.bind(*args, **kwargs).arguments[arg])
            existed = folder.exists()
            try:
                return fn(*args, **kwargs)
            except BaseException:
                if not existed:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                raise
        return call
    return wrap


@contextlib.contextmanager
def temporary_folder(prefix: str, beside: Path | None = None) -> Iterator[Path]:
    """A named temporary folder (`ggtool-PREFIX-PID-…`, in `beside` or the system's temp folder), removed on every
    exit path; those of killed runs are removed first."""
    parent = Path(beside) if beside is not None else Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for p in parent.glob(f"ggtool-{prefix}-*"):
            m = re.match(rf"ggtool-{re.escape(prefix)}-(\d+)-", p.name)
            if m and p.is_dir() and not _pid_alive(int(m[1])):
                shutil.rmtree(p, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"ggtool-{prefix}-{os.getpid()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reserve(path: Path, n_bytes: int) -> None:
    """Allocate `n_bytes` for `path` now, so a full disk fails here with ENOSPC instead of a SIGBUS when a
    memory-mapped write first touches a page that has no space behind it."""
    if n_bytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, n_bytes)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate
            return
        raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
    finally:
        os.close(fd)


# -- environment errors ----------------------------------------------------------------------------------
_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check the permissions, or write elsewhere",
    errno.EPERM: "check the permissions, or write elsewhere",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "pass a file, not a folder",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.EIO: "the disk reported an I/O error",
}


def os_error(e: OSError) -> GgtoolError:
    """An OSError from the environment as one line naming the path and the cause."""
    path = e.filename if e.filename is not None else None
    cause = e.strerror or str(e)
    where = f"{path}: " if path is not None else ""
    if e.filename2 is not None:
        where = f"{e.filename} → {e.filename2}: "
    return GgtoolError(f"{where}{cause.lower() if cause[:1].isupper() and cause[1:2].islower() else cause}",
                       _HINTS.get(e.errno))
