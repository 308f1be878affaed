# AGPL-3.0 License
"""Performance-aware oracle for PAGCP: per-task detection losses on a fixed calibration subset.

The reference evaluates the whole validation set for every ratio of every unit. Here a seeded subset of
`n_images` training images is letterboxed once and kept in memory; every oracle call is one forward
over it with the current masks (no copies of the model), so a decision costs n_images image-forwards.
With the prefix cache those forwards start at the unit's first layer: the outputs of the layers before it
(which the unit's masks cannot change) are computed once per unit and reused by every ratio tried.
Under DDP the batches can be split across the processes (shard=True), their losses all-reduced.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from data.datasets import build_val_loader
from prune.masks import top_layer
from prune.surgery import conv_flops
from utils.distributed import all_reduce_sum, zero_first
from utils.distributed import shard as my_share


def sequential_layers(model: nn.Module) -> bool:
    """True for YOLO models that run their layer list in order (models/yolo.py, ultralytics DetectionModel): each
    layer has .f (inputs) and .i (index) and the model a .save set. Only those can start a forward mid-network."""
    layers = getattr(model, "model", None)
    return (isinstance(layers, (nn.ModuleList, nn.Sequential)) and hasattr(model, "save")
            and (hasattr(model, "_forward_once") or hasattr(model, "_predict_once"))
            and all(hasattr(m, "f") and hasattr(m, "i") for m in layers))


def _run_layers(model: nn.Module, layers, x, y: list):
    """YOLO's forward loop over some of its layers; y holds the earlier outputs (None where not saved)."""
    for m in layers:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in model.save else None)
    return x


def _read_from(model: nn.Module, start: int) -> set[int]:
    """Indices of the earlier outputs that layers >= start read (besides their predecessor's)."""
    return {j if j >= 0 else m.i + j for m in model.model[start:] for j in ([m.f] if isinstance(m.f, int) else m.f)
            if j != -1}


def run_prefix(model: nn.Module, x: torch.Tensor, start: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Layers [0, start): (the last one's output, the earlier outputs that layers >= start read)."""
    y = []
    x = _run_layers(model, model.model[:start], x, y)
    return x, {j: y[j] for j in _read_from(model, start) if j < start}


def extend_prefix(model: nn.Module, x: torch.Tensor, saved: dict[int, torch.Tensor], start: int, new: int):
    """run_prefix(model, img, new) from run_prefix(model, img, start) = (x, saved), new >= start: only layers
    [start, new) run."""
    y = [saved.get(j) for j in range(start)]
    x = _run_layers(model, model.model[start:new], x, y)
    return x, {j: y[j] for j in _read_from(model, new) if j < new}


def run_suffix(model: nn.Module, x: torch.Tensor, saved: dict[int, torch.Tensor], start: int):
    """Layers [start, end) from run_prefix's result: what model(img) returns."""
    return _run_layers(model, model.model[start:], x, [saved.get(j) for j in range(start)])


class CalibrationOracle:
    def __init__(self, model: nn.Module, batches: list[dict], criterion: Callable, tasks: list[str],
                 device: torch.device | str = "cpu", bn: str = "running", prefix_cache: bool = False,
                 shard: bool = False):
        """bn='running': BN uses its running statistics (the model as it would be deployed now);
        bn='batch': BN normalizes with each calibration batch's own statistics (running ones untouched),
        i.e. the loss the cut would have after BN re-estimation (--bn-recalib).
        prefix_cache: after focus(masks, group), forwards start at the group's first layer and reuse the earlier
        layers' outputs, recomputed only when a mask acting there changes (model weights must not change meanwhile,
        as within a PAGCP pass).
        shard: under DDP (utils.distributed) this process runs only batches rank, rank + world, ... and the
        per-batch losses are all-reduced, then summed in batch order as a single process does: every process
        gets the single-process value, bit for bit, so PAGCP decides identically on all of them. Every process
        must then make the same calls. No effect in a single process."""
        if bn not in ("running", "batch"):
            raise ValueError(f"oracle BN mode must be 'running' or 'batch', got '{bn}'")
        self.model, self.batches, self.criterion, self.tasks, self.bn = model, batches, criterion, tasks, bn
        self.device = torch.device(device)
        self.calls = 0
        self.images = sum(int(b["img"].shape[0]) for b in batches)  # all processes' images
        self._own = my_share(len(batches)) if shard else range(len(batches))
        self._sharded = len(self._own) < len(batches)
        if self._sharded:  # other processes' images are never needed here
            self.batches = [b if k in self._own else None for k, b in enumerate(batches)]
        self.prefix_cache = prefix_cache and sequential_layers(model)
        self.flop_forwards = 0.0  # image-forwards weighted by the share of the model's FLOPs actually run
        self.cache_bytes = _cache_budget(self.device)  # cached activations above this (all batches) are not kept
        self._masks = self._start = self._guard = self._snapshot = self._cache = None
        self._suffix_share = 1.0
        self._pending_flops = 0.0  # FLOP-weighted forwards of prefix extensions not yet counted by a call

    @property
    def image_forwards(self) -> int:
        return self.calls * self.images

    def focus(self, masks, group_id: int | None) -> None:
        """The next calls vary only this group's mask (PAGCP visits one unit at a time); None ends the focus.

        Focusing on a group that starts at the same or a later layer than the current focus, with no mask before
        the current start changed meanwhile, extends the cached outputs over the layers in between instead of
        recomputing them: a sweep over the units in layer order (the budgeted greedy's pricing round) runs every
        layer's prefix once."""
        start = masks.first_layer(group_id) if (self.prefix_cache and group_id is not None) else None
        keep = (start and self._start is not None and self._cache is not None and start >= self._start
                and all(self._cache[k] is not None for k in self._own) and self._snapshot is not None
                and torch.equal(masks.values[self._guard], self._snapshot))
        old, self._start = self._start, start or None
        if not self._start:  # None, or 0: nothing before the group to reuse
            self._cache = self._snapshot = None
            return
        self._masks, self._guard = masks, masks.indices_before(self._start)
        share = _layer_share_from(masks.groups, self._start)
        if keep and start > old:
            with self._bn_mode():
                for k in self._own:  # this process's batches (the rest are None under DDP sharding)
                    self._cache[k] = extend_prefix(self.model, *self._cache[k], old, start)
                    added = int(self.batches[k]["img"].shape[0]) * (self._suffix_share - share)
                    self.flop_forwards += added
                    self._pending_flops += added  # all-reduced with the next call's count
        if keep:
            self._snapshot = masks.values[self._guard].clone()
        else:
            self._cache = self._snapshot = None
        self._suffix_share = share

    def _forward(self, b: dict, k: int):
        img = b["img"].to(self.device, non_blocking=True).float() / 255
        n = img.shape[0]
        if self._start is None:
            self.flop_forwards += n
            return img, self.model(img)
        if self._cache is None:  # first call of the focus, or a mask before the start changed: full forward
            self._cache = [None] * len(self.batches)
        if self._cache[k] is None:
            x, saved = run_prefix(self.model, img, self._start)
            self.flop_forwards += n * (1 - self._suffix_share)
            size = sum(t.numel() * t.element_size() for t in [x, *saved.values()] if isinstance(t, torch.Tensor))
            if size * len(self._own) > self.cache_bytes:  # too big to keep: plain forwards for this unit
                start, self._start, self._cache = self._start, None, None
                self.flop_forwards += n * self._suffix_share
                return img, run_suffix(self.model, x, saved, start)
            self._cache[k] = x, saved
        x, saved = self._cache[k]
        self.flop_forwards += n * self._suffix_share
        return img, run_suffix(self.model, x, saved, self._start)

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        """Mean per-task loss over the calibration images (eval mode: BN running statistics)."""
        self.calls += 1
        if self._start is not None:
            snap = self._masks.values[self._guard].clone()
            if self._snapshot is None or not torch.equal(snap, self._snapshot):
                self._cache, self._snapshot = None, snap
        # one row per batch (loss per task x images), and a last row holding this call's FLOP-weighted forwards
        rows = np.zeros((len(self.batches) + 1, len(self.tasks)))
        flops_before = self.flop_forwards - self._pending_flops  # prefix extensions since the last call count here
        self._pending_flops = 0.0
        with self._bn_mode():
            for k in self._own:
                b = self.batches[k]
                img, out = self._forward(b, k)
                raw = _train_output(out)
                _, items = self.criterion(raw, b)
                rows[k] = items.detach().float().cpu().numpy() * img.shape[0]  # float32, exact in float64
        rows[-1, 0] = self.flop_forwards - flops_before
        if self._sharded:
            rows = all_reduce_sum(rows)  # every row comes from one process, zeros elsewhere: the sum is exact
        self.flop_forwards = flops_before + float(rows[-1, 0])
        total = np.zeros(len(self.tasks), np.float32)
        for r in rows[:-1].astype(np.float32):  # float32, batch by batch: the same sum whatever the sharding
            total = total + r
        return total / max(self.images, 1)

    def mask_fisher(self, masks) -> np.ndarray:
        """Fisher information of every channel mask on the calibration images, shape (mask classes,):
        sum over images n of (dL_n / dm_n)^2 (ChannelMasks.fisher), where m_n is image n's multiplier of the channel (1 = kept) and
        L_n its detection loss under the current masks, in this oracle's BN mode. A first-order estimate of the
        loss a channel's removal costs that sees what follows the channel (BN scales, the next convs, the head),
        which a filter's norm does not. Group Fisher's criterion (seeds 001/003; Liu et al., "Group Fisher
        Pruning for Practical Network Compression", ICML 2021), here ranking channels inside a PAGCP unit.
        Full forwards (the prefix cache is neither used nor changed) with gradients on the masks only: model .grad
        buffers are not touched. Raises RuntimeError when the model's loss does not depend on the masks."""
        total = torch.zeros(len(masks.values), dtype=torch.float64)  # plain forwards: a prefix cache stays valid
        with self._bn_mode(), torch.enable_grad():
            for k in self._own:
                b = self.batches[k]
                img = b["img"].to(self.device, non_blocking=True).float() / 255
                ps = masks.start_per_sample(img.shape[0], self.device)
                try:
                    out = self.model(img)
                finally:
                    masks.per_sample = None
                raw = _train_output(out)
                loss, _ = self.criterion(raw, b)
                (g,) = torch.autograd.grad(loss.sum(), ps)
                total += masks.fisher(g)
                self.flop_forwards += 3 * img.shape[0]  # a backward costs about two forwards
        if self._sharded:
            total = torch.as_tensor(all_reduce_sum(total.numpy()))
        return total.numpy()

    @contextlib.contextmanager
    def _bn_mode(self):
        """Eval mode; with bn='batch' BatchNorm normalizes with the batch's statistics (running ones untouched)."""
        was_training = self.model.training
        bns = []
        if self.bn == "batch":
            bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            saved = [m.momentum for m in bns]
            for m in bns:
                m.train()
                m.momentum = 0.0  # batch statistics in the forward, running statistics unchanged
        elif was_training:  # train()/eval() walk every module: skip when already in eval mode
            self.model.eval()
        try:
            yield
        finally:
            for m, mom in zip(bns, saved if bns else []):
                m.momentum = mom
                m.train(was_training)
            if was_training and not bns:
                self.model.train()


def _train_output(out):
    """The training-format head output the loss reads: YOLOv5/v7 eval forwards return (predictions, train maps)."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, dict)):
        return out[1]
    return out


def _cache_budget(device: torch.device) -> int:
    """Bytes the prefix cache may hold: 4 GiB, and on a GPU at most a quarter of its free memory."""
    budget = 4 << 30
    if device.type == "cuda":
        try:
            budget = min(budget, torch.cuda.mem_get_info(device)[0] // 4)
        except (RuntimeError, AssertionError):  # no usable CUDA: the forward would fail first anyway
            pass
    return budget


def _layer_share_from(groups, start: int) -> float:
    """Share of the model's conv/linear FLOPs (at the traced size) in layers >= start."""
    convs = [(top_layer(mod), conv_flops(ci)) for mod, ci in groups.graph.conv_info.items() if ci.kind in ("conv", "linear")]
    total = sum(f for _, f in convs)
    return sum(f for layer, f in convs if layer is None or layer >= start) / total if total else 1.0


def calibration_batches(data: dict, imgsz: int, n_images: int, batch_size: int, seed: int, stride: int = 32,
                        split: str = "train") -> list[dict]:
    """A seeded random subset of a split, letterboxed to imgsz squares, loaded once. Under DDP every process
    calls it (local rank 0 first: it may write the split's label cache)."""
    with zero_first():
        ds = build_val_loader(data, split, imgsz, batch_size, stride, workers=0, rect=False).dataset
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(ds), size=min(n_images, len(ds)), replace=False).tolist())
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, collate_fn=ds.collate_fn)
    return list(loader)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[dict], device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var on `batches` (cumulative average, no weight changes).

    Pruning removes channels whose outputs fed later layers; their BN statistics are stale until
    re-estimated (adaptive BN, as in EagleEye); docs/benchmarks/pagcp.md measures what it recovers.
    Returns the number of BN layers reset.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return 0
    saved = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    model.train()
    for b in batches:
        model(b["img"].to(device).float() / 255)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


def recalibrate_bn_if_better(model: nn.Module, recal_batches: list[dict], check_batches: list[dict], criterion,
                             device: torch.device | str = "cpu") -> tuple[bool, float, float]:
    """Re-estimate BN statistics on recal_batches, keeping them only if the summed task loss on check_batches
    (other images) falls. Returns (kept, loss before, loss after).

    Re-estimation rescues a badly cut model, but estimates from a few images are worse than a release model's
    own statistics when little was cut, and then its calibration losses rise (bench/bn_recalib.py,
    docs/benchmarks/pagcp.md), which is what this check sees.
    """
    tasks = list(getattr(criterion, "names", ["loss"]))
    check = CalibrationOracle(model, check_batches, criterion, tasks, device)
    before = float(check().sum())
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    recalibrate_bn(model, recal_batches, device)
    model.eval()
    after = float(check().sum())
    kept = after < before or (math.isfinite(after) and not math.isfinite(before))  # never keep a NaN loss
    if not kept:
        model.load_state_dict(saved, strict=False)
    return kept, before, after
