# AGPL-3.0 License
"""Small helpers shared by the CLIs: run folders, devices, logging."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

import torch

import utils  # noqa: F401


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at emit time (redirections and test capture keep working)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


LOGGER = logging.getLogger("yolo_compress")
if not LOGGER.handlers:
    _h = _StdoutHandler()
    _h.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_h)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


class UsageError(ValueError):
    """Bad user input; the CLIs print the message as one line and exit with status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a container stop, `timeout`, a scheduler's preemption), raised where Ctrl-C would be."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within this block SIGTERM behaves like Ctrl-C: Terminated (a KeyboardInterrupt) is raised in the main
    thread, so the CLIs leave their state as they do on Ctrl-C (atomic writes keep the previous file, run folders
    stay resumable) and print how to resume. The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_status(e: KeyboardInterrupt) -> tuple[str, int]:
    """('interrupted' or 'terminated (SIGTERM)', exit status 130 or 143) for an interrupt caught by a CLI."""
    return ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """runs/val/exp -> runs/val/exp2, exp3, ... (never reuses an existing folder unless exist_ok)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        n = 2
        while Path(f"{path}{n}").exists():
            n += 1
        path = Path(f"{path}{n}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def select_device(device: str | int = "") -> torch.device:
    """'' -> cuda:0 if available else cpu; 'cpu'; '0' or '0,1' (first listed is used by single-process code)."""
    d = str(device).strip().lower().replace("cuda:", "")
    if d in ("", "none"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps requested but MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    ids = [x for x in d.split(",") if x]
    if not all(x.isdigit() for x in ids):
        raise UsageError(f"invalid --device '{device}': use 'cpu', a CUDA index like 0, or a list like 0,1")
    n = torch.cuda.device_count()
    bad = [x for x in ids if int(x) >= n]
    if bad:
        have = f"{n} CUDA device(s)" if n else "no CUDA device"
        raise UsageError(f"--device {device} requested but this machine has {have}; use --device cpu or a valid index")
    return torch.device(f"cuda:{ids[0]}")


def check_imgsz(imgsz: int, stride: int = 32, flag: str = "--imgsz") -> int:
    """The image size every entry point uses: `imgsz` rounded up to a multiple of `stride` (a model's max stride,
    at least 32), as YOLOv5 rounds it. Logs one WARNING line when the size changes.

    Args:
        imgsz: requested size in pixels (> 0).
        stride: the model's largest stride in pixels; values below 32 count as 32.
        flag: the flag name the warning quotes.
    Returns:
        The rounded size in pixels.
    Raises:
        UsageError: imgsz is not a positive integer.
    """
    if int(imgsz) != imgsz or imgsz <= 0:
        raise UsageError(f"{flag} must be a positive number of pixels, got {imgsz}")
    stride = max(int(stride), 32)
    new = max(stride, -(-int(imgsz) // stride) * stride)
    if new != imgsz:
        LOGGER.warning(f"WARNING: {flag} {imgsz} must be a multiple of max stride {stride}, updating to {new}")
    return new
