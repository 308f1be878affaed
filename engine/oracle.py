# AGPL-3.0 License
"""Performance-aware oracle for PAGCP: per-task detection losses on a fixed calibration subset.

The reference evaluates the whole validation set for every ratio of every unit. Here a seeded subset of
`n_images` training images is letterboxed once and kept in memory; every oracle call is one forward
over it with the current masks (no copies of the model), so a decision costs n_images image-forwards.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn


class CalibrationOracle:
    def __init__(self, model: nn.Module, batches: list[dict], criterion: Callable, tasks: list[str],
                 device: torch.device | str = "cpu", bn: str = "running"):
        """bn='running': BN uses its running statistics (the model as it would be deployed now);
        bn='batch': BN normalizes with each calibration batch's own statistics (running ones untouched),
        i.e. the loss the cut would have after BN re-estimation (--bn-recalib)."""
        if bn not in ("running", "batch"):
            raise ValueError(f"oracle BN mode must be 'running' or 'batch', got '{bn}'")
        self.model, self.batches, self.criterion, self.tasks, self.bn = model, batches, criterion, tasks, bn
        self.device = torch.device(device)
        self.calls = 0
        self.images = sum(int(b["img"].shape[0]) for b in batches)

    @property
    def image_forwards(self) -> int:
        return self.calls * self.images

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        """Mean per-task loss over the calibration images (eval mode: BN running statistics)."""
        self.calls += 1
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
        total = None
        for b in self.batches:
            img = b["img"].to(self.device, non_blocking=True).float() / 255
            out = self.model(img)
            raw = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, dict)) else out
            _, items = self.criterion(raw, b)
            items = items.detach().float().cpu().numpy() * img.shape[0]
            total = items if total is None else total + items
        for m, mom in zip(bns, saved if bns else []):
            m.momentum = mom
            m.train(was_training)
        if was_training and not bns:
            self.model.train()
        return total / max(self.images, 1)


def calibration_batches(data: dict, imgsz: int, n_images: int, batch_size: int, seed: int, stride: int = 32,
                        split: str = "train") -> list[dict]:
    """A seeded random subset of a split, letterboxed to imgsz squares, loaded once."""
    from torch.utils.data import DataLoader, Subset

    from engine.data import build_val_loader

    ds = build_val_loader(data, split, imgsz, batch_size, stride, workers=0, rect=False).dataset
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(ds), size=min(n_images, len(ds)), replace=False).tolist())
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, collate_fn=ds.collate_fn)
    return list(loader)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[dict], device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var on `batches` (cumulative average, no weight changes).

    Pruning removes channels whose outputs fed later layers; their BN statistics are stale until
    re-estimated (adaptive BN, as in EagleEye). On the official YOLOv5n cut to 90% FLOPs by L1 this
    lifts coco128 mAP50-95 from 0.034 to 0.113 with 32 images. Returns the number of BN layers reset.
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

    Re-estimation rescues a badly cut model (uniform L1 to 90% FLOPs on official yolov5n: mAP50-95 0.034 ->
    0.113) but estimates from a few images are worse than a release model's own statistics when little was
    cut: re-estimating the uncut yolov5n on 64 coco128 images drops mAP50-95 0.291 -> 0.246, and its
    calibration losses rise 5-9% (bench/bn_recalib.py), which is what this check sees.
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
