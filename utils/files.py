# AGPL-3.0 License
"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over it.

A reader (or a run restarted after a kill) sees the previous file or the new one, never half of one.
A full disk becomes one clear line (DiskFullError) and the previous file stays as it was.
Modes follow the umask as a plain open() would: a new file gets 0666 & ~umask, a replaced file keeps
its mode (temporary files are created 0600, so without this every output would be private).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Callable

from utils.general import UsageError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no EDQUOT on Windows


class DiskFullError(UsageError, OSError):
    """No space left (or quota exceeded) while saving; an OSError that the CLIs print as one line."""


def _disk_full(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind e, if any: torch.save re-raises a failed write as a RuntimeError
    whose __context__ is the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a mode is at stake)
    os.umask(mask)
    return mask


def target_mode(path: str | Path) -> int:
    """The permission bits `path` should end up with: its current mode when it exists (replacing a file
    keeps its mode), else 0666 & ~umask, as a plain open(path, 'w') would create it."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def replace_file(tmp: str | Path, path: str | Path) -> Path:
    """Give the finished temporary file `tmp` the mode `path` should have (target_mode), then rename it
    over `path` (atomic on one filesystem)."""
    os.chmod(tmp, target_mode(path))
    os.replace(tmp, path)
    return Path(path)


def _disk_full_error(path: Path, full: OSError) -> DiskFullError:
    keep = f"the previous {path.name} is unchanged" if path.exists() else f"{path.name} was not written"
    err = DiskFullError(f"no space left on device while saving {path} ({keep}): free some space and "
                        "run again (compress.py and train.py continue with --resume)")
    err.errno = full.errno
    return err


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(f) on a binary temporary file next to `path`, then rename it to `path` (mode: target_mode)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = _disk_full(e)
        if full is not None:
            raise _disk_full_error(path, full) from None
        raise
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """For writers that need a file name (matplotlib's savefig, cv2.VideoWriter, ONNX export): yields a
    temporary path next to `path` with the same suffix (writers pick the format from it); when the block
    ends without error the file is renamed to `path` with target_mode, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to {path}")
        replace_file(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        full = _disk_full(e)
        if full is not None:
            raise _disk_full_error(path, full) from None
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(obj: Any, path: str | Path, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))


def copy_file(src: str | Path, dst: str | Path) -> Path:
    import shutil

    with open(src, "rb") as s:
        return atomic_write(dst, lambda f: shutil.copyfileobj(s, f))


def save_figure(fig, path: str | Path, **kw) -> Path:
    """matplotlib fig.savefig(path, **kw), written atomically with target_mode."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, **kw)
    return Path(path)
