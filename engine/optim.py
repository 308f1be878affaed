# AGPL-3.0 License
"""Optimizer, learning-rate schedule and frozen layers of a training run, as YOLOv5's train.py builds them."""

from __future__ import annotations

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
