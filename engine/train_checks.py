# AGPL-3.0 License
"""Warnings a training run gives about itself, once each: the sparsity term overwhelming the detection loss's
gradients, and validation mAP collapsing below a share of the run's first validated value
(docs/benchmarks/training.md shows both on a sparsity run with a too-large --sparsity)."""

from __future__ import annotations

import math

import torch

from utils.general import LOGGER

SPARSITY_DOMINANCE = 1.0  # sparsity subgradient norm / detection-loss gradient norm on the penalized BN scales
MAP_DROP_SHARE = 0.5  # warn when mAP50-95 falls below this share of the run's first validated mAP50-95


class TrainingWatch:
    """Collects a run's warnings (`self.warnings`, in order) and logs each one once."""

    def __init__(self):
        self.warnings: list[str] = []
        self.start_map: float | None = None
        self._said: set[str] = set()

    def _warn(self, kind: str, msg: str) -> None:
        if kind in self._said:
            return
        self._said.add(kind)
        self.warnings.append(msg)
        LOGGER.warning(f"WARNING: {msg}")

    def sparsity_step(self, sparsity, sl_flag: float) -> None:
        """Call before sparsity.apply() with the (unscaled) detection gradients in place: warns when the
        penalty's subgradient (sl * sign(gamma)) outweighs them on the penalized BatchNorm scales."""
        if sparsity is None or "sparsity" in self._said or not sparsity.bns:
            return
        det, n = 0.0, 0
        for _, bn in sparsity.bns:
            if bn.weight.grad is not None:
                det += float(bn.weight.grad.detach().float().pow(2).sum())
                n += int(torch.count_nonzero(bn.weight.detach()))
        pen = sparsity.sl * math.sqrt(n)
        if n and pen > SPARSITY_DOMINANCE * math.sqrt(det):
            self._warn("sparsity", f"--sparsity {sl_flag:g}: the sparsity term's gradient on the BatchNorm scales "
                                   f"is {pen / max(math.sqrt(det), 1e-12):.3g}x the detection loss's; it will drive "
                                   "the scales (and mAP) to zero: lower --sparsity (e.g. 1e-4 to 1e-3) or lr0")

    def epoch(self, epoch: int, map50_95: float | None) -> None:
        """After a validation: warns when mAP50-95 fell below MAP_DROP_SHARE of the run's first validated value."""
        if map50_95 is None:
            return
        if self.start_map is None:
            self.start_map = map50_95
            return
        if self.start_map > 0 and map50_95 < MAP_DROP_SHARE * self.start_map:
            self._warn("map", f"epoch {epoch + 1}: mAP50-95 {map50_95:.3f} fell below {MAP_DROP_SHARE:.0%} of the "
                              f"run's first validated {self.start_map:.3f}: the training is destroying the model "
                              "(too high lr0, --sparsity or a wrong hyp?)")
