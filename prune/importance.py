# AGPL-3.0 License
"""Importance criteria: one score per channel of a group (higher = more important = kept).

A criterion reads the members of each channel (weight rows of producing convs, BN scales, ...) and
reduces over coupled members with `sum` or `mean`. Adding a criterion = one function + one entry in
CRITERIA. Seed 002's numeric criteria 0-6 map onto these names (SEED_CRITERIA).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from prune.groups import Group


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    t = dict(model.named_parameters())
    t.update(dict(model.named_buffers()))
    return t


def _producer_rows(group: Group, tensors, kind: str = "conv"):
    """Per channel: list of weight slices of producing convs/linears (role 'out', param 'weight')."""
    rows = []
    for ms in group.members:
        sl = []
        for m in ms:
            if m.role != "out" or m.param != "weight" or m.module not in group.producers:
                continue
            w = tensors[f"{m.module}.weight"]
            sl.append(w.detach().select(m.dim, m.index).float())
        rows.append(sl)
    return rows


def _bn_scales(group: Group, tensors, modules) -> list[list[float]]:
    out = []
    for ms in group.members:
        vals = []
        for m in ms:
            if m.param == "weight" and isinstance(modules.get(m.module), nn.modules.batchnorm._BatchNorm):
                vals.append(float(tensors[f"{m.module}.weight"].detach()[m.index].abs()))
        out.append(vals)
    return out


def _reduce(values: list[list[float]], how: str) -> np.ndarray:
    f = np.mean if how == "mean" else np.sum
    return np.array([f(v) if v else 0.0 for v in values], dtype=np.float64)


def l1(model, group, reduction="sum", **_):
    return _reduce([[float(w.abs().sum()) for w in row] for row in _producer_rows(group, _tensors(model))], reduction)


def l2(model, group, reduction="sum", **_):
    return _reduce([[float(w.norm()) for w in row] for row in _producer_rows(group, _tensors(model))], reduction)


def l1_largest(model, group, reduction="sum", **_):
    return -l1(model, group, reduction)


def l2_largest(model, group, reduction="sum", **_):
    return -l2(model, group, reduction)


def bn_scale(model, group, reduction="sum", **_):
    return _reduce(_bn_scales(group, _tensors(model), dict(model.named_modules())), reduction)


def bn_l1(model, group, reduction="sum", **_):
    return bn_scale(model, group, reduction) * l1(model, group, reduction)


def random(model, group, seed: int = 0, **_):
    rng = np.random.default_rng(seed * 100003 + group.id)
    return rng.random(len(group))


def taylor(model, group, reduction="sum", **_):
    """First-order Taylor |sum(w * dL/dw)| over each channel's producer rows (needs .grad from a backward)."""
    tensors = _tensors(model)
    vals = []
    for ms in group.members:
        v = []
        for m in ms:
            if m.role == "out" and m.param == "weight" and m.module in group.producers:
                w = tensors[f"{m.module}.weight"]
                if w.grad is None:
                    raise RuntimeError("taylor importance needs gradients: run a backward pass first")
                v.append(float((w.detach() * w.grad).select(m.dim, m.index).sum().abs()))
        vals.append(v)
    return _reduce(vals, reduction)


CRITERIA: dict[str, Callable[..., np.ndarray]] = {
    "l1": l1,
    "l2": l2,
    "l1_largest": l1_largest,
    "l2_largest": l2_largest,
    "bn": bn_scale,
    "bnl1": bn_l1,
    "random": random,
    "taylor": taylor,
}
# YOLOv7 iterative pruning (seed 002): --criterion 0..6
SEED_CRITERIA = {0: "l2", 1: "l2_largest", 2: "l1", 3: "l1_largest", 4: "bn", 5: "bnl1", 6: "random"}


def get_criterion(name) -> Callable[..., np.ndarray]:
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        name = SEED_CRITERIA.get(int(name), str(name))
    key = str(name).lower()
    if key not in CRITERIA:
        raise ValueError(f"unknown criterion '{name}': choose from {', '.join(CRITERIA)} or 0-6")
    return CRITERIA[key]
