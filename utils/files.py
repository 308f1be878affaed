# AGPL-3.0 License
"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over it.

A reader (or a run restarted after a kill) sees the previous file or the new one, never half of one.
A full disk becomes one clear line (DiskFullError) and the previous file stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
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


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(f) on a binary temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = _disk_full(e)
        if full is not None:
            keep = f"the previous {path.name} is unchanged" if path.exists() else f"{path.name} was not written"
            err = DiskFullError(f"no space left on device while saving {path} ({keep}): free some space and "
                                "run again (compress.py and train.py continue with --resume)")
            err.errno = full.errno
            raise err from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(obj: Any, path: str | Path, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))


def copy_file(src: str | Path, dst: str | Path) -> Path:
    import shutil

    with open(src, "rb") as s:
        return atomic_write(dst, lambda f: shutil.copyfileobj(s, f))
