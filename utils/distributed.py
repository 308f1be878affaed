# AGPL-3.0 License
"""Distributed plumbing shared by train.py and compress.py: one process per device under PyTorch's own launcher
(torchrun, i.e. python -m torch.distributed.run), NCCL on GPUs and gloo on CPU.

`--device 0,1,2,3` outside a launcher re-runs the script under torch.distributed.run (relaunch); under the
launcher every process calls setup() once for its device and the process group. Every helper below is a no-op
in a single process, so callers need no distributed branches of their own:

    is_main()              rank 0, or a single process: the only writer of run folders, checkpoints and reports
    broadcast(obj)         rank 0's (picklable) value, on every rank
    agree(obj, what)       rank 0's value on every rank; a rank whose own value differs says so (a warning)
    all_reduce_sum(x)      element-wise sum over the ranks of a numpy array or tensor
    check_same(obj, what)  every rank holds the same value (sha256 of its JSON), else DistributedMismatch
    zero_first()           local rank 0 runs the block first (generated data, label caches), then the others
    shard(n)               the items of 0..n-1 this rank handles: rank, rank + world, ...

Every rank must reach the collective helpers (broadcast, agree, all_reduce_sum, check_same, barrier, zero_first)
in the same order. Run folders are shared: every rank reads what rank 0 wrote (one machine, or a shared
filesystem for several).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from utils.general import LOGGER, UsageError, select_device

TIMEOUT = datetime.timedelta(hours=3)  # rank 0 validates (COCO: minutes) while the others wait at a collective


class DistributedMismatch(RuntimeError):
    """The processes of one run disagree on something they must share (e.g. the pruned structure)."""


def rank() -> int:
    """Global rank from the launcher's environment; -1 outside a launcher."""
    return int(os.environ.get("RANK", -1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", -1))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() in (-1, 0)


def active() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def device_ids(device) -> list[str]:
    """'0,1,2,3' / 'cuda:0,1' -> ['0', '1', '2', '3']; '' and 'cpu' -> []."""
    return [x.strip() for x in str(device).lower().replace("cuda:", "").split(",") if x.strip().isdigit()]


def check_batch(batch_size: int | None, processes: int) -> None:
    if batch_size is not None and processes > 1 and batch_size % processes:
        raise UsageError(f"--batch-size {batch_size} must be a multiple of the {processes} processes "
                         f"(it is the total batch, split evenly): use e.g. {batch_size - batch_size % processes or processes}")


def relaunch(device, script: str, argv: list[str], batch_size: int | None = None) -> int | None:
    """`--device 0,1` outside a launcher: run `script argv` under torch.distributed.run with one process per
    listed device (--standalone: one machine) and return its exit code. None when there is nothing to do (one
    device, or already under a launcher). Raises UsageError (before any process starts) for a listed device that
    does not exist or a batch size the processes cannot share."""
    ids = device_ids(device)
    if len(ids) < 2 or "LOCAL_RANK" in os.environ:
        return None
    select_device(device)  # a clear line if a listed device does not exist
    check_batch(batch_size, len(ids))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}", script,
           *argv]
    return subprocess.call(cmd)


def setup(device="") -> torch.device:
    """This process's device. Under a launcher (WORLD_SIZE > 1) also joins the process group (NCCL on CUDA,
    gloo on CPU) unless already joined: local rank i takes the i-th device of `--device 0,1,...` (cuda:i when no
    list is given), and ranks other than 0 log warnings only. Raises UsageError for a device list that does not
    match the processes on this machine or a CUDA device that does not exist."""
    if world_size() <= 1:
        return select_device(device)
    ids = device_ids(device)
    if str(device).strip().lower() == "cpu" or (not ids and not torch.cuda.is_available()):
        dev = torch.device("cpu")
    else:
        n_local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        if ids and len(ids) != n_local:
            raise UsageError(f"--device {device} lists {len(ids)} device(s) but the launcher started {n_local} "
                             "process(es) on this machine: list one device per process (or leave --device out)")
        index = ids[local_rank()] if ids else str(local_rank())
        dev = select_device(index)  # a clear line if it does not exist
        torch.cuda.set_device(dev)
    if not (dist.is_available() and dist.is_initialized()):
        # ultralytics' settings manager runs a zero-first barrier when it is first imported inside a process
        # group: importing it now, on every process, keeps a later first import on rank 0 alone from hanging
        import ultralytics.utils  # noqa: F401

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    if not is_main():
        LOGGER.setLevel(logging.WARNING)  # one copy of the logs: rank 0's
    return dev


@contextmanager
def process_group(device=""):
    """setup(device) for the duration of the block (yields the device); a group created here is destroyed on
    exit, one that existed before is left alone."""
    created = world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    dev = setup(device)
    try:
        yield dev
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast(obj, src: int = 0):
    """The value `obj` has on rank `src`, on every rank (pickled; for small objects: paths, plans, summaries)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(obj, what: str):
    """Rank 0's value on every rank. Ranks that computed the same thing independently should hold it already;
    one that does not logs a warning naming `what`, and continues with rank 0's value."""
    if not active():
        return obj
    ref = broadcast(obj)
    if ref != obj:
        LOGGER.warning(f"rank {rank()}: its own {what} differs from rank 0's; using rank 0's")
    return ref


def all_reduce_sum(x):
    """Element-wise sum over all ranks of a numpy array or a tensor (a new object, on the caller's device and
    dtype; the input is not modified). Adding zeros is exact, so ranks that fill disjoint rows of a zero array
    get exactly the rows every rank computed."""
    if not active():
        return x
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = t.detach().to(comm, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    out = buf.to(t.device)
    return out.numpy() if is_np else out


def checksum(obj) -> str:
    """sha256 of obj's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def check_same(obj, what: str) -> str:
    """Every rank must hold the same `obj` (e.g. the pruned model's channel table): compares checksums over all
    ranks and raises DistributedMismatch naming the ranks that differ from rank 0. Returns the checksum."""
    mine = checksum(obj)
    if not active():
        return mine
    sums = [None] * dist.get_world_size()
    dist.all_gather_object(sums, mine)
    bad = [r for r, s in enumerate(sums) if s != sums[0]]
    if bad:
        raise DistributedMismatch(
            f"{what} differs between the processes: rank(s) {bad} disagree with rank 0 (sha256 {sums[0][:12]} vs "
            f"{', '.join(sums[r][:12] for r in bad)}); every process must train the same pruned structure, stopping")
    return mine


@contextmanager
def zero_first():
    """Local rank 0 runs the block before the other ranks (which wait): files it creates (a generated dataset,
    ultralytics' label caches) exist, whole, when they run it."""
    lr = local_rank() if active() else -1
    if lr > 0:
        barrier()
    yield
    if lr == 0:
        barrier()


def shard(n: int) -> range:
    """Indices of n items (calibration batches) that this rank handles."""
    return range(dist.get_rank(), n, dist.get_world_size()) if active() else range(n)
