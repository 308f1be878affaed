# AGPL-3.0 License
"""Optimizer, learning-rate schedule and frozen layers of a training run, as YOLOv5's train.py builds them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
import torch.nn as nn
from ultralytics.utils.torch_utils import one_cycle

from utils.general import LOGGER

OptimizerName = Literal["SGD", "Adam", "AdamW"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


def freeze_layers(model: nn.Module, freeze) -> None:
    """requires_grad off for the first `freeze` layers (an int) or the listed layer indices (a list of 2+), and
    for ultralytics' DFL conv (fixed by design); on for every other parameter (released checkpoints are saved
    with requires_grad off)."""
    freeze = list(freeze) if isinstance(freeze, (list, tuple)) else [int(freeze)]
    layers = freeze if len(freeze) > 1 else list(range(freeze[0] if freeze else 0))
    prefixes = tuple(f"model.{x}." for x in layers)
    for name, p in model.named_parameters():
        p.requires_grad_(not (name.startswith(prefixes) or ".dfl" in name))


def build_optimizer(model: nn.Module, hyp: dict, name: OptimizerName, nbs: int, accumulate: int,
                    batch: int) -> torch.optim.Optimizer:
    """YOLOv5's three groups: biases (no decay, warmup from warmup_bias_lr), decayed weights (weight_decay scaled
    by batch * accumulate / nbs), and normalization scales / implicit vectors (no decay). Trainable parameters
    only."""
    biases, decayed, plain = [], [], []
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for m in model.modules():
        for p_name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if p_name == "bias":
                biases.append(p)
            elif isinstance(m, norm_types) or p.ndim <= 1 or "implicit" in p_name:
                plain.append(p)
            else:
                decayed.append(p)
    lr, momentum = hyp.get("lr0", 0.01), hyp.get("momentum", 0.937)
    if name == "SGD":
        optim = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        optim = cls(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    wd = hyp.get("weight_decay", 5e-4) * batch * accumulate / nbs
    optim.add_param_group({"params": decayed, "weight_decay": wd})
    optim.add_param_group({"params": plain, "weight_decay": 0.0})
    LOGGER.info(f"optimizer: {name}(lr={lr}) with parameter groups {len(plain)} weight(decay=0.0), "
                f"{len(decayed)} weight(decay={wd:.2e}), {len(biases)} bias")
    return optim


def lr_factor(epochs: int, lrf: float, cos_lr: bool) -> Callable[[float], float]:
    """Epoch -> multiplier of lr0: one-cycle cosine with cos_lr, else linear, from 1 down to lrf."""
    if cos_lr:
        return one_cycle(1, lrf, max(epochs, 1))

    def linear(x):
        return (1 - x / max(epochs, 1)) * (1.0 - lrf) + lrf

    return linear


ScheduleKind = Literal["epochs", "steps"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleKind)
StepDecay = Literal["cosine", "linear"]
STEP_DECAYS: tuple[str, ...] = get_args(StepDecay)


@dataclass(frozen=True)
class StepSchedule:
    """A fine-tune's schedule stated in optimizer steps (`schedule: steps`), so the same settings serve a
    300-step and a 30,000-step run: linear warmup of `warmup` steps (learning rate from 0, momentum from
    warmup_momentum), then `decay` (cosine or linear) from lr0 down to lr0 * lrf at the last step; the EMA's
    decay ramps up over `ema_tau` steps towards `ema_decay`, whose averaging window (1 / (1 - decay)) is a
    fixed share of the run."""

    total: int
    warmup: int
    lr0: float
    lrf: float
    decay: str
    ema_tau: float
    ema_decay: float
    momentum: float = 0.937
    warmup_momentum: float = 0.8
    lr0_source: str = "hyp"

    @classmethod
    def create(cls, total: int, hyp: dict, opt, base_lr0: float | None = None) -> StepSchedule:
        """From the run's options (`opt`: lr_factor, warmup_steps, warmup_share, step_decay, ema_tau_share,
        ema_window_share) and hyp; lr0 = base_lr0 * lr_factor when the base model's own training lr0 is known,
        else the hyp's lr0 as it is."""
        total = max(int(total), 1)
        lr0, source = (base_lr0 * opt.lr_factor, f"base lr0 {base_lr0:g} x {opt.lr_factor:g}") \
            if base_lr0 else (float(hyp.get("lr0", 0.01)), "the hyp's lr0")
        warmup = int(min(opt.warmup_steps, round(opt.warmup_share * total)))
        window = max(opt.ema_window_share * total, 1.0)
        return cls(total=total, warmup=warmup, lr0=lr0, lrf=float(hyp.get("lrf", 0.01)), decay=opt.step_decay,
                   ema_tau=max(opt.ema_tau_share * total, 1.0), ema_decay=1.0 - 1.0 / max(window, 1.0 + 1e-9),
                   momentum=float(hyp.get("momentum", 0.937)),
                   warmup_momentum=float(hyp.get("warmup_momentum", 0.8)), lr0_source=source)

    def factor(self, step: int) -> float:
        """Multiplier of lr0 at optimizer step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        x = min(max(step - self.warmup, 0) / max(self.total - self.warmup - 1, 1), 1.0)
        shape = (1 - math.cos(x * math.pi)) / 2 if self.decay == "cosine" else x
        return 1.0 - shape * (1.0 - self.lrf)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every parameter group's lr (and momentum during warmup) for optimizer step `step`."""
        lr = self.lr0 * self.factor(step)
        mom = self.momentum if step >= self.warmup else \
            self.warmup_momentum + (self.momentum - self.warmup_momentum) * step / max(self.warmup, 1)
        for g in optimizer.param_groups:
            g["lr"] = lr
            if "momentum" in g:
                g["momentum"] = mom
            elif "betas" in g:
                g["betas"] = (mom, g["betas"][1])

    def line(self) -> str:
        return (f"schedule in optimizer steps: {self.total} steps, warmup {self.warmup}, lr0 {self.lr0:.3g} "
                f"({self.lr0_source}), {self.decay} decay to {self.lr0 * self.lrf:.3g}, EMA tau {self.ema_tau:.0f} "
                f"steps (decay {self.ema_decay:.5f}, window {1 / (1 - self.ema_decay):.0f} steps)")
