# AGPL-3.0 License
"""Torch-Pruning (https://github.com/VainF/Torch-Pruning) as a peer row of bench/custom_data.py.

The library users pick instead of this toolkit, cut the same base model to the same FLOPs share, with the Detect
head excluded (`ignored_layers`, as torch-pruning's YOLOv5/YOLOv8 examples do) and global pruning:
  tp-l2         MetaPruner (the MagnitudePruner) with MagnitudeImportance(p=2, group_reduction="first"): the L2 norm
                of each conv's own filters, ranked across the whole network;
  tp-groupnorm  MetaPruner with GroupMagnitudeImportance(p=2): DepGraph's group norm, the L2 norm of every weight
                coupled to a channel (its conv, its BN and the input channels of its consumers). torch_pruning
                >= 1.3 names this criterion GroupMagnitudeImportance; GroupNormImportance was its earlier name.
The pruning ratio is searched until this toolkit's FLOPs count (utils.flops.gflops at the bench's image size) of
the cut model over the base's hits the target within `tol`. The result is saved as a checkpoint models.loader
accepts (the pruned nn.Module under 'model', a 'pruning' record, the yaml marked pruned), so train.py fine-tunes it
with its recovery recipe like any pruned checkpoint. A benchmark-only dependency (requirements-bench.txt).
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import torch
import torch.nn as nn

from engine.train_state import storable
from models.loader import detection_head, load_model
from prune.widths import mark_yaml_pruned, width_mismatches
from utils.checkpoint import save_checkpoint
from utils.flops import gflops

TP_METHODS = ("tp-l2", "tp-groupnorm")
TP_LABELS = {"tp-l2": "Torch-Pruning L2 (global)", "tp-groupnorm": "Torch-Pruning group norm (global)"}
TP_MISSING = "torch_pruning is not importable: Torch-Pruning rows skipped (pip install -r requirements-bench.txt)"


def tp_available() -> bool:
    """Whether torch_pruning can be imported (the Torch-Pruning rows are skipped otherwise)."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def _importance(method: str):
    import torch_pruning as tp

    if method == "tp-l2":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="first")
    if method == "tp-groupnorm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    raise ValueError(f"unknown Torch-Pruning method '{method}' (one of {', '.join(TP_METHODS)})")


def tp_cut(model: nn.Module, method: str, ratio: float, example_size: int = 64) -> nn.Module:
    """A pruned copy of `model`: torch-pruning's global pruner at channel `ratio`, the detection head ignored."""
    import torch_pruning as tp

    m = copy.deepcopy(model).float().eval()
    for p in m.parameters():
        p.requires_grad_(True)
    example = torch.zeros(1, 3, example_size, example_size)
    pruner = tp.pruner.MetaPruner(m, example, importance=_importance(method), global_pruning=True,
                                  pruning_ratio=ratio, ignored_layers=[detection_head(m)])
    pruner.step()
    return m


def tp_prune(model: nn.Module, method: str, target: float, imgsz: int, tol: float = 0.01,
             iters: int = 14) -> tuple[nn.Module, dict]:
    """Search the global pruning ratio until gflops(cut) / gflops(model) is within `tol` of `target`; returns
    (pruned model, info with ratio, flops_share, torch-pruning's own MACs share and the tries). FLOPs fall about
    with the square of the kept channel share, so each try aims with share ~ (1 - ratio)^2 fitted to the tries
    so far, inside the bracket they leave (bisection when the aim falls outside)."""
    import torch_pruning as tp

    base_flops = gflops(model, imgsz)
    lo, hi, best, tries, err = 0.0, 1.0, None, [], None
    r = 1 - target ** 0.5
    for _ in range(iters):
        try:
            cut = tp_cut(model, method, r)
            share = gflops(cut, imgsz) / base_flops
        except (RuntimeError, ValueError) as e:  # a ratio that empties a layer: prune less
            tries.append((round(r, 4), None))
            hi, err, r = r, e, (lo + r) / 2
            continue
        tries.append((round(r, 4), round(share, 4)))
        if best is None or abs(share - target) < abs(best[2] - target):
            best = (cut, r, share)
        if abs(share - target) <= tol:
            break
        lo, hi = (r, hi) if share > target else (lo, r)
        aim = 1 - (1 - r) * (target / share) ** 0.5  # share ~ c * (1 - r)^2 through this try
        r = aim if lo < aim < hi else (lo + hi) / 2
    if best is None:
        raise RuntimeError(f"{method}: no pruning ratio worked ({err})")
    cut, r, share = best
    example = torch.zeros(1, 3, 64, 64)  # MACs shares of a convnet do not depend on the input size
    macs = tp.utils.count_ops_and_params(cut.eval(), example)[0] / tp.utils.count_ops_and_params(
        copy.deepcopy(model).float().eval(), example)[0]
    return cut, {"ratio": r, "flops_share": share, "tp_macs_share": macs, "tries": tries}


def save_tp_checkpoint(model: nn.Module, path: str | Path, method: str, source: str, info: dict) -> Path:
    """Save a torch-pruning result as a checkpoint models.loader and train.py accept (pruned, marked)."""
    m = storable(model)
    mark_yaml_pruned(m)
    bad = width_mismatches(m)
    if bad:
        raise RuntimeError(f"{method}: torch-pruning left module widths out of step: {bad[:3]}")
    ckpt = {"model": m.half(), "epoch": -1, "date": datetime.datetime.now().isoformat(),
            "pruning": {"method": method, "source": str(source), "ratio": info["ratio"], "tool": "torch_pruning"}}
    return save_checkpoint(ckpt, path)


def tp_prune_checkpoint(weights: str, method: str, target: float, imgsz: int, out: str | Path) -> dict:
    """Load `weights`, cut it with `method` to `target` of its FLOPs, save to `out`; returns the info dict."""
    model = load_model(weights)
    cut, info = tp_prune(model, method, target, imgsz)
    save_tp_checkpoint(cut, out, method, weights, info)
    back = load_model(out)  # what train.py will load
    info["params"] = sum(p.numel() for p in back.parameters())
    info["gflops"] = gflops(back, imgsz)
    return info
