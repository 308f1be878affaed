# AGPL-3.0 License
"""One entry point from a checkpoint path or a model yaml to a float detector of any family.

Families:
  'yolov5'      anchor-based YOLOv5 (v5.0 and v6+ releases), models.yolo.Model with a Detect head
  'yolov7'      anchor-based YOLOv7, models.yolo.Model with an IDetect head
  'ultralytics' YOLOv5u / YOLOv8 / YOLOv9 / YOLO11 ... through ultralytics.nn.tasks.DetectionModel
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.yolo import MODELS_DIR, Detect, IDetect, Model
from utils.checkpoint import CheckpointError, load_checkpoint

FAMILIES = ("yolov5", "yolov7", "ultralytics")


def model_family(model: nn.Module) -> str:
    head = detection_head(model)
    if isinstance(head, IDetect):
        return "yolov7"
    if isinstance(head, Detect):
        return "yolov5"
    return "ultralytics"


def detection_head(model: nn.Module) -> nn.Module:
    return model.model[-1]


def is_anchor_based(model: nn.Module) -> bool:
    return isinstance(detection_head(model), Detect)


def _names_dict(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    return {i: f"class{i}" for i in range(nc)}


def _finalize(model: nn.Module, names: Any = None) -> nn.Module:
    """Common post-load fixes: float32, eval, names as a dict, nc, compatibility attributes."""
    model = model.float().eval()
    head = detection_head(model)
    nc = int(head.nc)
    model.names = _names_dict(names if names is not None else getattr(model, "names", None), nc)
    if len(model.names) != nc:
        model.names = {i: model.names.get(i, f"class{i}") for i in range(nc)}
    model.nc = nc
    if not hasattr(model, "stride") or model.stride is None:
        model.stride = getattr(head, "stride", None)
    if model.stride is None:
        model.stride = torch.tensor([32.0])
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # checkpoints pickled before torch 1.11
        if isinstance(m, Detect) and not hasattr(m, "inplace"):
            m.inplace = True
    return model


def _from_ultralytics_checkpoint(ckpt: dict, path: Path) -> nn.Module:
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    model = ckpt.get("ema") or ckpt["model"]
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    model.task = getattr(model, "task", None) or guess_model_task(model)
    if model.task != "detect":
        raise CheckpointError(f"{path}: an ultralytics '{model.task}' model; this toolkit compresses detectors only")
    return model


def _from_yaml(cfg: str | Path, nc: int | None) -> nn.Module:
    p = Path(cfg)
    ours = p if p.exists() else MODELS_DIR / p
    if ours.exists() or next(MODELS_DIR.rglob(p.name), None) is not None:
        import yaml

        d = yaml.safe_load((ours if ours.exists() else next(MODELS_DIR.rglob(p.name))).read_text())
        if "backbone" in d and "anchors" in d:  # YOLOv5 / YOLOv7 anchor-based yaml
            return Model(ours if ours.exists() else p.name, nc=nc)
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    try:
        d = yaml_model_load(str(cfg))
    except (FileNotFoundError, AssertionError) as e:
        raise FileNotFoundError(
            f"model yaml '{cfg}' not found in ./, {MODELS_DIR} or the ultralytics package: {e}"
        ) from None
    return DetectionModel(d, nc=nc, verbose=False)


def load_model(weights: str | Path, nc: int | None = None, trust: bool = False, fuse: bool = False) -> nn.Module:
    """Checkpoint (.pt) or model yaml -> float32 eval-mode detector with .names (dict), .nc and .stride.

    nc applies to yaml builds only (a checkpoint keeps its trained classes).
    """
    weights = Path(weights)
    if weights.suffix in (".yaml", ".yml"):
        model = _finalize(_from_yaml(weights, nc))
    else:
        ckpt = load_checkpoint(weights, trust=trust)
        if isinstance(ckpt, nn.Module):
            model = ckpt
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
            model = ckpt.get("ema") or ckpt["model"]
            if not isinstance(model, Model):
                model = _from_ultralytics_checkpoint(ckpt, weights)
        else:
            keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(
                f"{weights}: not a YOLO checkpoint (no 'model' or 'ema' module; found {keys}). "
                "Pass a full checkpoint saved by YOLOv5/YOLOv7/ultralytics or this toolkit, not a bare state_dict"
            )
        if not hasattr(model, "model") or not isinstance(getattr(model, "model", None), nn.Sequential):
            raise CheckpointError(f"{weights}: the pickled model ({type(model).__name__}) is not a YOLO detector")
        model = _finalize(model)
    return fuse_model(model) if fuse else model


def fuse_model(model: nn.Module) -> nn.Module:
    """Fold BatchNorm (and RepConv branches) into convs for inference, in place, any family."""
    if not hasattr(model, "fuse"):
        return model
    return model.fuse() if isinstance(model, Model) else model.fuse(verbose=False)


def reset_classes(model: nn.Module, nc: int) -> nn.Module:
    """Give a trained detector (full or pruned) a head for `nc` classes, in place, keeping every other weight.

    Only the class outputs change: anchor-based heads keep their box and objectness rows per anchor;
    ultralytics heads replace the last conv of each class branch. Used when fine-tuning COCO weights on
    another dataset without rebuilding the (possibly pruned) model from a yaml.
    """
    from models.common import ImplicitM

    head = detection_head(model)
    old = int(head.nc)
    if old == nc:
        return model
    if isinstance(head, Detect):
        na, no_old, no_new = head.na, old + 5, nc + 5
        for i, conv in enumerate(head.m):
            new = nn.Conv2d(conv.in_channels, na * no_new, 1).to(conv.weight.device)
            with torch.no_grad():
                for a in range(na):
                    new.weight[a * no_new: a * no_new + 5] = conv.weight[a * no_old: a * no_old + 5]
                    new.bias[a * no_new: a * no_new + 5] = conv.bias[a * no_old: a * no_old + 5]
                    new.bias[a * no_new + 5: (a + 1) * no_new] = -4.6  # a low class prior, as fresh heads start
            head.m[i] = new
            if isinstance(head, IDetect):
                head.im[i] = ImplicitM(na * no_new).to(conv.weight.device)
        head.nc, head.no = nc, no_new
    elif hasattr(head, "cv3") and getattr(head, "cv3", None) is not None:
        for branch in head.cv3:
            last = branch[-1]
            if not isinstance(last, nn.Conv2d):
                raise CheckpointError(f"cannot change the number of classes of this {type(head).__name__} head")
            new = nn.Conv2d(last.in_channels, nc, 1).to(last.weight.device)
            nn.init.constant_(new.bias, -4.6)
            branch[-1] = new
        if getattr(head, "one2one_cv3", None) is not None:
            raise CheckpointError("changing the number of classes of an end-to-end (one-to-one) head is not supported")
        head.nc, head.no = nc, nc + head.reg_max * 4
    else:
        raise CheckpointError(f"cannot change the number of classes of a {type(head).__name__} head")
    model.nc = nc
    model.names = {i: f"class{i}" for i in range(nc)}
    return model
