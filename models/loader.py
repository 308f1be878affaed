# AGPL-3.0 License
"""One entry point from a checkpoint path or a model yaml to a float detector of any family.

Families:
  'yolov5'      anchor-based YOLOv5 (v5.0 and v6+ releases), models.yolo.Model with a Detect head
  'yolov7'      anchor-based YOLOv7, models.yolo.Model with an IDetect head
  'ultralytics' YOLOv5u / YOLOv8 / YOLOv9 / YOLO11 ... through ultralytics.nn.tasks.DetectionModel

  ultralytics segmentation models (Segment head, YOLOv8/YOLO11 -seg) through ultralytics.nn.tasks.SegmentationModel

Other model kinds (ultralytics pose / OBB / classify, YOLO26's Segment26, RT-DETR, YOLO-World, YOLOE, or any head
this toolkit does not know) are refused by `check_supported` in one line, before anything is built or written: every
tool loads its model here, so none of them can prune, train, validate or export such a model half-way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.common import ImplicitM
from models.yolo import MODELS_DIR, Detect, IDetect, Model, init_head_bias
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.general import UsageError

FAMILIES = ("yolov5", "yolov7", "ultralytics")
# the detection heads supported end to end (prune, fine-tune, validate, export), by family
YOLO_HEADS = ("Detect", "IDetect")  # models.yolo
ULTRALYTICS_HEADS = ("Detect", "v10Detect", "Segment")  # ultralytics.nn.modules.head; YOLO26 detectors use Detect
SUPPORTED = ("detection models (YOLOv5/YOLOv7 Detect, IDetect heads; ultralytics Detect, v10-style and YOLO26 heads) "
             "and ultralytics YOLOv8/YOLO11 segmentation models (Segment head)")
# head class name (prefix) -> the kind of model a user knows it as
_TASKS = (("YOLOESegment", "a YOLOE segmentation"), ("Segment", "a segmentation"), ("SemanticSegment", "a segmentation"),
          ("Pose", "a pose"), ("OBB", "an oriented-box (OBB)"), ("Classify", "a classification"),
          ("RTDETRDecoder", "an RT-DETR"), ("WorldDetect", "a YOLO-World"), ("YOLOEDetect", "a YOLOE"))


def check_supported(head: nn.Module | str, source: Any, ultralytics: bool = True) -> None:
    """Refuse a model whose head (a module or, for a yaml, the head's class name) is not a supported detection
    head: raises UsageError with one line naming the task and what is supported. `ultralytics`: whether a head
    given by name comes from an ultralytics yaml (else a YOLOv5/YOLOv7 yaml of models/)."""
    if isinstance(head, str):
        name, ok = head, head in (ULTRALYTICS_HEADS if ultralytics else YOLO_HEADS)
    else:
        name, cls = type(head).__name__, type(head)
        if cls.__module__.startswith("ultralytics."):
            from ultralytics.nn.modules import head as ul_heads

            ok = cls in tuple(getattr(ul_heads, n) for n in ULTRALYTICS_HEADS)
        else:
            ok = cls in (Detect, IDetect)
    if ok:
        return
    task = next((t for prefix, t in _TASKS if name.startswith(prefix)), None)
    what = f"{task} model ({name} head)" if task else f"a model with a head this toolkit does not know ({name})"
    raise UsageError(f"{source}: {what} is not supported; this toolkit supports {SUPPORTED}: pass one of those")


def model_family(model: nn.Module) -> str:
    head = detection_head(model)
    if isinstance(head, IDetect):
        return "yolov7"
    if isinstance(head, Detect):
        return "yolov5"
    return "ultralytics"


def detection_head(model: nn.Module) -> nn.Module:
    return model.model[-1]


def model_task(model: nn.Module) -> str:
    """The ultralytics task of a model by its head: 'segment', 'pose', 'obb' or 'detect' (YOLOv5/YOLOv7 too)."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):  # e.g. an exported model's wrapper: the task it says it has
        return str(getattr(model, "task", None) or "detect")
    head = layers[-1]
    if not type(head).__module__.startswith("ultralytics."):
        return "detect"
    from ultralytics.nn.modules.head import OBB, Pose, Segment

    return next((t for cls, t in ((Segment, "segment"), (Pose, "pose"), (OBB, "obb")) if isinstance(head, cls)),
                "detect")


def is_anchor_based(model: nn.Module) -> bool:
    return isinstance(detection_head(model), Detect)


def _names_dict(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    return {i: f"class{i}" for i in range(nc)}


def finalize(model: nn.Module, names: Any = None) -> nn.Module:
    """Common post-load fixes: float32, eval, names as a dict, nc, compatibility attributes."""
    model = model.float().eval()
    head = detection_head(model)
    nc = int(head.nc)
    model.names = _names_dict(names if names is not None else getattr(model, "names", None), nc)
    if len(model.names) != nc:
        model.names = {i: model.names.get(i, f"class{i}") for i in range(nc)}
    model.nc = nc
    if not isinstance(model, Model):  # ultralytics keeps a model's own `task` when it loads one (YOLO(p).task)
        model.task = model_task(model)
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
    return model


def _from_yaml(cfg: str | Path, nc: int | None) -> nn.Module:
    p = Path(cfg)
    ours = p if p.exists() else MODELS_DIR / p
    if ours.exists() or next(MODELS_DIR.rglob(p.name), None) is not None:
        import yaml

        d = yaml.safe_load((ours if ours.exists() else next(MODELS_DIR.rglob(p.name))).read_text())
        if "backbone" in d and "anchors" in d:  # YOLOv5 / YOLOv7 anchor-based yaml
            check_supported(_yaml_head(d), cfg, ultralytics=False)
            return Model(ours if ours.exists() else p.name, nc=nc)
    from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel, yaml_model_load

    try:
        d = yaml_model_load(str(cfg))
    except (FileNotFoundError, AssertionError) as e:
        raise FileNotFoundError(
            f"model yaml '{cfg}' not found in ./, {MODELS_DIR} or the ultralytics package: {e}"
        ) from None
    check_supported(_yaml_head(d), cfg)  # before building: some heads (YOLO-World, YOLOE) fail to build here
    head = _yaml_head(d)  # the task's model class: its loss (init_criterion) is the task's
    cls = next((c for prefix, c in (("Segment", SegmentationModel), ("Pose", PoseModel), ("OBB", OBBModel))
                if head.startswith(prefix)), DetectionModel)
    return cls(d, nc=nc, verbose=False)


def _yaml_head(d: dict) -> str:
    """The class name of a model yaml's last layer (its head), '?' when the yaml does not say."""
    layers = d.get("head") or d.get("backbone") or [[]]
    last = layers[-1] if isinstance(layers, list) and layers else []
    return str(last[2]).split(".")[-1] if isinstance(last, list) and len(last) > 2 else "?"


def load_model(weights: str | Path, nc: int | None = None, trust: bool = False, fuse: bool = False) -> nn.Module:
    """Checkpoint (.pt) or model yaml -> float32 eval-mode detector with .names (dict), .nc and .stride.

    nc applies to yaml builds only (a checkpoint keeps its trained classes).
    """
    weights = Path(weights)
    if weights.suffix in (".yaml", ".yml"):
        model = finalize(_from_yaml(weights, nc))
    else:
        ckpt = load_checkpoint(weights, trust=trust)
        if isinstance(ckpt, nn.Module):
            model = ckpt
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
            model = ckpt.get("ema") or ckpt["model"]
        else:
            keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(
                f"{weights}: not a YOLO checkpoint (no 'model' or 'ema' module; found {keys}). "
                "Pass a full checkpoint saved by YOLOv5/YOLOv7/ultralytics or this toolkit, not a bare state_dict"
            )
        if not hasattr(model, "model") or not isinstance(getattr(model, "model", None), nn.Sequential):
            raise CheckpointError(f"{weights}: the pickled model ({type(model).__name__}) is not a YOLO detector")
        check_supported(detection_head(model), weights)
        if isinstance(ckpt, dict) and not isinstance(model, Model):
            model = _from_ultralytics_checkpoint(ckpt, weights)
        model = finalize(model)
    return fuse_model(model) if fuse else model


def fuse_model(model: nn.Module) -> nn.Module:
    """Fold BatchNorm (and RepConv branches) into convs for inference, in place, any family."""
    if not hasattr(model, "fuse"):
        return model
    return model.fuse() if isinstance(model, Model) else model.fuse(verbose=False)


def reset_classes(model: nn.Module, nc: int, names: dict[int, str] | list[str] | None = None) -> nn.Module:
    """Give a trained detector (full or pruned) a head for `nc` classes, in place, keeping every learned weight
    that does not depend on the class set.

    New class outputs start exactly as in a freshly built model of `nc` classes; every other row is kept:
    - YOLOv5 Detect / YOLOv7 IDetect: per level the output conv (na·(nc_old+5) -> na·(nc+5) rows) keeps each
      anchor's box and objectness rows (weights and biases); the class rows get PyTorch's default conv init
      plus the class prior of `models.yolo.init_head_bias` (as `Model._initialize_biases` gives a fresh
      model: class probability ≈ 0.6/nc, ≈ 1 for one class — the YOLOv5 loss has no class term at nc = 1,
      so a low prior would cap every score). IDetect's ImplicitM keeps its learned values for the box and
      objectness rows, new rows drawn as ImplicitM draws them (N(1, 0.02)); ImplicitA (input side) is kept.
    - ultralytics Detect and its subclasses (v10Detect, end-to-end YOLO26 heads with one2one branches):
      the last conv of every class branch is replaced with a default-initialised conv whose bias is set by the
      head's own `bias_init()` (cls bias log(5 / nc / (640 / stride)²)); box branches keep their learned
      biases (bias_init's box value is not applied). The hidden class-branch layers are kept as trained.
    `names` (the new class names): a new class whose name (case and spaces ignored) the model already knows
    keeps that class's learned row, as ultralytics' own checkpoint loading remaps class rows by name — except
    in an anchor-based head with one class, whose class output no loss term trains (it keeps the fresh ≈ 1).
    Shapes: in_channels of each output conv are kept, so pruned models stay pruned.
    Raises CheckpointError for heads it does not know (fails closed).
    """
    head = detection_head(model)
    old = int(head.nc)
    if old == nc:
        return model
    same = class_rows_kept(model, nc, names)
    if isinstance(head, Detect):
        _reset_anchor_head(head, nc, same)
    elif getattr(head, "cv3", None) is not None or getattr(head, "one2one_cv3", None) is not None:
        _reset_ultralytics_head(head, nc, same)
    else:
        raise CheckpointError(f"cannot change the number of classes of a {type(head).__name__} head")
    model.nc = nc
    model.names = _names_dict(names, nc) if names is not None else {i: f"class{i}" for i in range(nc)}
    if isinstance(getattr(model, "yaml", None), dict):
        model.yaml["nc"] = nc  # a later save/export describes the model as it now is
    return model


def class_rows_kept(model: nn.Module, nc: int, names: Any) -> dict[int, int]:
    """{new class index: old class index} of the learned class rows `reset_classes` keeps (same name; none
    for an anchor-based head with one class, whose class output no loss term trains)."""
    if is_anchor_based(model) and nc == 1:
        return {}
    return same_name_rows(getattr(model, "names", None), names, nc)


def same_name_rows(old_names: Any, new_names: Any, nc: int) -> dict[int, int]:
    """{new class index: old class index} for classes with the same name (placeholder names never match)."""
    if old_names is None or new_names is None:
        return {}
    old, new = _names_dict(old_names, 0), _names_dict(new_names, nc)

    def key(i: int, n: str) -> str | None:
        n = n.strip().lower()
        return None if n in (str(i), f"class{i}") else n

    lookup = {key(i, n): i for i, n in old.items()}
    lookup.pop(None, None)
    return {j: lookup[k] for j, n in new.items() if j < nc and (k := key(j, n)) in lookup}


@torch.no_grad()
def _reset_anchor_head(head: Detect, nc: int, same: dict[int, int]) -> None:
    if head.stride is None:
        raise CheckpointError(f"cannot change the number of classes of a {type(head).__name__} head without strides")
    na, no_old, no_new = head.na, head.nc + 5, nc + 5
    rows = [*range(5), *(5 + j for j in same)], [*range(5), *(5 + i for i in same.values())]  # new, old per anchor
    keep_new = [a * no_new + r for a in range(na) for r in rows[0]]
    keep_old = [a * no_old + r for a in range(na) for r in rows[1]]
    for i, conv in enumerate(head.m):
        if not isinstance(conv, nn.Conv2d) or conv.bias is None or conv.out_channels != na * no_old:
            raise CheckpointError(f"cannot change the number of classes of this {type(head).__name__} head")
        new = nn.Conv2d(conv.in_channels, na * no_new, 1).to(conv.weight)
        init_head_bias(new, na, nc, float(head.stride[i]))  # the fresh model's priors for every row ...
        new.weight[keep_new] = conv.weight[keep_old]  # ... then the learned rows over them
        new.bias[keep_new] = conv.bias[keep_old]
        new.weight.requires_grad_(conv.weight.requires_grad)
        new.bias.requires_grad_(conv.bias.requires_grad)
        head.m[i] = new
        if isinstance(head, IDetect):
            im = ImplicitM(na * no_new).to(conv.weight)
            im.implicit[:, keep_new] = head.im[i].implicit[:, keep_old]
            im.implicit.requires_grad_(head.im[i].implicit.requires_grad)
            head.im[i] = im
    head.nc, head.no = nc, no_new


@torch.no_grad()
def _reset_ultralytics_head(head: nn.Module, nc: int, same: dict[int, int]) -> None:
    branches = [b for b in (getattr(head, "cv3", None), getattr(head, "one2one_cv3", None)) if b is not None]
    if not hasattr(head, "bias_init") or not hasattr(head, "reg_max") or not bool((head.stride > 0).all()):
        raise CheckpointError(f"cannot change the number of classes of a {type(head).__name__} head")
    pairs = []
    for branch_list in branches:
        for branch in branch_list:
            last = branch[-1]
            if not isinstance(last, nn.Conv2d) or last.out_channels != head.nc:
                raise CheckpointError(f"cannot change the number of classes of this {type(head).__name__} head")
            new = nn.Conv2d(last.in_channels, nc, 1, bias=last.bias is not None).to(last.weight)
            new.requires_grad_(last.weight.requires_grad)
            branch[-1] = new
            pairs.append((new, last))
    head.nc, head.no = nc, nc + head.reg_max * 4
    # the head's own fresh-model bias rule, applied to the new convs only: everything else is restored
    fresh = {id(p) for c, _ in pairs for p in c.parameters()}
    learned = {n: p.detach().clone() for n, p in head.named_parameters() if id(p) not in fresh}
    learned.update({n: b.detach().clone() for n, b in head.named_buffers()})
    head.bias_init()
    for n, t in list(head.named_parameters()) + list(head.named_buffers()):
        if n in learned:
            t.copy_(learned[n])
    new_rows, old_rows = list(same), list(same.values())
    for new, last in pairs:  # classes the model already knew keep their rows
        new.weight[new_rows] = last.weight[old_rows]
        if new.bias is not None:
            new.bias[new_rows] = last.bias[old_rows]


