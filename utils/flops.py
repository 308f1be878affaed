# AGPL-3.0 License
"""Parameter and FLOP counts (FLOPs = 2 x MACs, the YOLOv5/ultralytics convention)."""

from __future__ import annotations

import torch.nn as nn

import utils  # noqa: F401


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs at imgsz, profiled with thop on a stride-sized input and scaled (exact for convnets)."""
    from ultralytics.utils.torch_utils import get_flops

    return float(get_flops(model, imgsz))


def model_summary(model: nn.Module, imgsz: int = 640) -> tuple[int, float, str]:
    n, g = count_params(model), gflops(model, imgsz)
    layers = len(list(model.modules()))
    return n, g, f"{type(model).__name__} summary: {layers} layers, {n:,} parameters, {g:.1f} GFLOPs at {imgsz}"
