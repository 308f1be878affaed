# AGPL-3.0 License
"""Width bookkeeping: the integers a block derived from its channel counts when it was built.

Surgery slices weights; a block that stored a width of its own (ultralytics C2f's `c`, read by `forward_split`, the
forward ultralytics' exporter switches to; Attention's `head_dim`/`key_dim`; a head's `nc`/`no`; YOLOv7 RepConv's
`in_channels`) must follow, or some framework path (export, fuse, an end-to-end head) breaks on the pruned model.

RULES maps a block class (by package and class name, found through the MRO so subclasses inherit) to a rule: a
function giving each width attribute's value from the block's current layers, and the int attributes that are no
widths (repeat counts, strides, head counts). `sync_widths` applies the rules after surgery. Any other int
attribute of a block outside torch.nn is treated as an unknown width: `uncovered_widths` lists such blocks and the
graph keeps their channels unprunable (fail closed) until a rule is added here. torch.nn's own layers are not
listed: surgery fixes Conv/BatchNorm/Linear, and the tracer refuses ops of the others (group_norm, layer_norm, ...).

The yaml a pruned model carries no longer describes its widths, and the trainers of ultralytics, YOLOv5 and YOLOv7
rebuild the model from `model.yaml` and copy over only the tensors whose shapes still match: silently, an unpruned,
mostly re-initialised model. `mark_yaml_pruned` makes those rebuilds stop with one line naming the way out
(engine.ultralytics_trainer for ultralytics, this repository's train.py for YOLOv5/YOLOv7); loading the pickled
model (their predict, val, export, DetectMultiBackend, torch.hub 'custom') never reads the yaml and keeps working.
`unmarked_yaml` gives back the yaml as it was, for this toolkit's own comparisons with the unpruned architecture.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

# int attributes that are never channel counts, on any block: ultralytics/YOLOv5 layer index, 'from' index, parameter
# count (recomputed by sync_widths) and the model's list of saved layer outputs
NOT_WIDTH = frozenset({"i", "f", "np", "type", "save"})

PRUNED_MARK = "yolo_compress_pruned"
PRUNED_MESSAGE = (
    "this model was pruned by yolo-compress: its yaml does not describe its layers, so ultralytics cannot rebuild it "
    "(YOLO(p).train() would train an unpruned, re-initialised model). Fine-tune it with "
    "`from engine.ultralytics_trainer import PrunedDetectionTrainer; YOLO(p).train(trainer=PrunedDetectionTrainer, "
    "...)` or with this repository's train.py"
)
# YOLOv5's and YOLOv7's parse_model `eval`s each layer's module name: this one is no name there, so their
# `Model(ckpt["model"].yaml)` (train.py, --resume) stops on the first layer with
# `NameError: name '<PRUNED_MODULE>' is not defined`, the instruction itself as the last line of the traceback
PRUNED_MODULE = "PRUNED_by_yolo_compress__cannot_rebuild_from_yaml__fine_tune_with_yolo_compress_train_py"


@dataclass(frozen=True)
class WidthRule:
    """derive(block) -> {attribute: value implied by the block's current layers}; constants: int attributes of the
    block that are not widths; atomic: why the block's channels (inputs and outputs included) must all stay, for a
    block whose forward ties them in a way the tracer cannot see (empty: prunable as the graph finds)."""

    derive: Callable[[nn.Module], dict]
    constants: tuple[str, ...] = ()
    atomic: str = ""


def _out(conv_block) -> int:
    """Output channels of an ultralytics/YOLOv5 Conv block (conv + bn) or a bare conv."""
    conv = getattr(conv_block, "conv", conv_block)
    return conv.out_channels


def _in(conv_block) -> int:
    return getattr(conv_block, "conv", conv_block).in_channels


def _ultralytics_head(m) -> dict:
    box = m.cv2 if m.cv2 is not None else m.one2one_cv2  # a fused end-to-end head keeps only its one-to-one branch
    cls = m.cv3 if m.cv3 is not None else m.one2one_cv3
    nc, reg_max = cls[0][-1].out_channels, box[0][-1].out_channels // 4
    return {"nc": nc, "reg_max": reg_max, "no": nc + 4 * reg_max, "nl": len(box)}


def _segment_head(m) -> dict:
    """Segment: the Detect widths, `nm` mask coefficients (= the protos Proto outputs, fixed by the graph as model
    outputs) and `npr`, Proto's internal width (prunable)."""
    return {**_ultralytics_head(m), "nm": _out(m.proto.cv3), "npr": _out(m.proto.cv1)}


def _anchor_head(m) -> dict:
    nc = m.m[0].out_channels // m.na - 5
    return {"nc": nc, "no": nc + 5, "nl": len(m.m)}


def _attention(m) -> dict:
    head_dim = _in(m.proj) // m.num_heads
    key_dim = (_out(m.qkv) // m.num_heads - head_dim) // 2
    return {"head_dim": head_dim, "key_dim": key_dim, "scale": key_dim**-0.5}


def _yolov7_repconv(m) -> dict:
    conv = m.rbr_reparam if hasattr(m, "rbr_reparam") else m.rbr_dense[0]
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "groups": conv.groups}


# (top-level package, class name) -> rule. Sources: ultralytics/nn/modules (8.3-8.4), models/common.py, models/yolo.py,
# torchvision.models (resnet, mobilenetv2, regnet) and torchvision.ops.misc.
RULES: dict[tuple[str, str], WidthRule] = {
    # ultralytics blocks: `c` is the half of cv1's output that forward_split splits off (C2f, C3k2, C2fCIB, ELAN...)
    ("ultralytics", "C2f"): WidthRule(lambda m: {"c": _out(m.cv1) // 2}),
    ("ultralytics", "RepNCSPELAN4"): WidthRule(lambda m: {"c": _out(m.cv1) // 2}),
    ("ultralytics", "C2PSA"): WidthRule(lambda m: {"c": _out(m.cv1) // 2}),
    ("ultralytics", "PSA"): WidthRule(lambda m: {"c": _out(m.cv1) // 2}),
    ("ultralytics", "C2fPSA"): WidthRule(lambda m: {"c": _out(m.cv1) // 2}),
    ("ultralytics", "SPPELAN"): WidthRule(lambda m: {"c": _out(m.cv1)}),
    ("ultralytics", "ADown"): WidthRule(lambda m: {"c": _out(m.cv1)}),  # stored only, never read
    # Attention reshapes its attention output to the channel count it reads from its input (`B, C, H, W = x.shape`),
    # which the tracer does not see: the input could be pruned while the heads keep their width (YOLO26's C3k2 attn)
    ("ultralytics", "Attention"): WidthRule(_attention, ("num_heads",), atomic="reshapes to its input's x.shape"),
    ("ultralytics", "AAttn"): WidthRule(
        lambda m: {"head_dim": _in(m.proj) // m.num_heads, "all_head_dim": _in(m.proj)}, ("num_heads", "area")),
    ("ultralytics", "RepConv"): WidthRule(lambda m: {"c1": _in(m.conv1), "c2": _out(m.conv1), "g": m.conv1.conv.groups}),
    ("ultralytics", "RepVGGDW"): WidthRule(lambda m: {"dim": _out(m.conv)}),
    ("ultralytics", "DFL"): WidthRule(lambda m: {"c1": m.conv.in_channels}),
    ("ultralytics", "CBLinear"): WidthRule(lambda m: {"c2s": m.c2s}),  # outputs are split by size: never pruned
    ("ultralytics", "CBFuse"): WidthRule(lambda m: {}, ("idx",)),
    ("ultralytics", "Concat"): WidthRule(lambda m: {}, ("d",)),
    ("ultralytics", "SPPF"): WidthRule(lambda m: {}, ("n",)),
    ("ultralytics", "Detect"): WidthRule(_ultralytics_head, ("max_det", "shape")),
    ("ultralytics", "Segment"): WidthRule(_segment_head, ("max_det", "shape")),
    ("ultralytics", "BaseModel"): WidthRule(lambda m: {"nc": m.model[-1].nc} if hasattr(m.model[-1], "nc") else {}),
    # YOLOv5 / YOLOv7 (models/)
    ("models", "Model"): WidthRule(lambda m: {"nc": m.model[-1].nc}),
    ("models", "Detect"): WidthRule(_anchor_head, ("na",)),
    ("models", "RepConv"): WidthRule(_yolov7_repconv),
    ("models", "ImplicitA"): WidthRule(lambda m: {"channel": m.implicit.shape[1]}),
    ("models", "ImplicitM"): WidthRule(lambda m: {"channel": m.implicit.shape[1]}),
    ("models", "Concat"): WidthRule(lambda m: {}, ("d",)),
    # torchvision classifiers of the conformance suite (widths stored for construction only)
    ("torchvision", "ResNet"): WidthRule(lambda m: {"inplanes": m.fc.in_features}, ("dilation", "groups", "base_width")),
    ("torchvision", "BasicBlock"): WidthRule(lambda m: {}, ("stride",)),
    ("torchvision", "Bottleneck"): WidthRule(lambda m: {}, ("stride",)),
    ("torchvision", "MobileNetV2"): WidthRule(lambda m: {"last_channel": m.classifier[-1].in_features}),
    ("torchvision", "InvertedResidual"): WidthRule(lambda m: {"out_channels": m.conv[-1].num_features}, ("stride",)),
    ("torchvision", "Conv2dNormActivation"): WidthRule(lambda m: {"out_channels": m[0].out_channels}),
}


def rule_for(m: nn.Module) -> WidthRule | None:
    """The rule of m's class or of its nearest ancestor that has one."""
    for cls in type(m).__mro__:
        rule = RULES.get((cls.__module__.split(".")[0], cls.__name__))
        if rule is not None:
            return rule
    return None


def _is_int_like(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(e, int) and not isinstance(e, bool) for e in v)


def int_attributes(m: nn.Module) -> dict:
    """Public int (or list-of-int) attributes the block stores itself (class attributes excluded)."""
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k not in NOT_WIDTH and _is_int_like(v)}


def _checked(m: nn.Module) -> bool:
    return not type(m).__module__.startswith("torch.nn")


def uncovered_widths(model: nn.Module) -> dict[str, list[str]]:
    """Module name -> int attributes no rule accounts for (possible widths): those blocks must not be pruned."""
    out = {}
    for name, m in model.named_modules():
        if not _checked(m):
            continue
        rule = rule_for(m)
        known = set(rule.constants) if rule else set()
        if rule:
            try:
                known |= set(rule.derive(m))
            except (AttributeError, IndexError, TypeError):  # a subclass laid out differently: not covered
                known = set()
        left = sorted(k for k in int_attributes(m) if k not in known)
        if left:
            out[name] = left
    return out


def unprunable_blocks(model: nn.Module) -> dict[str, str]:
    """Module name -> why every channel touching it must stay: a rule marks it atomic, or it keeps int attributes
    no rule covers (prune.groups blocks them: fail closed)."""
    out = {name: f"keeps width attributes {attrs} that no rule in prune/widths.py covers"
           for name, attrs in uncovered_widths(model).items()}
    for name, m in model.named_modules():
        rule = rule_for(m) if _checked(m) else None
        if rule is not None and rule.atomic and name not in out:
            out[name] = rule.atomic
    return out


def sync_widths(model: nn.Module) -> None:
    """Set every covered block's width attributes from its current layers (after surgery or a rebuild), and the
    ultralytics/YOLOv5 per-layer parameter count `np`."""
    for m in model.modules():
        if not _checked(m):
            continue
        rule = rule_for(m)
        if rule is not None:
            try:
                values = rule.derive(m)
            except (AttributeError, IndexError, TypeError):
                values = {}
            for k, v in values.items():
                if k in vars(m) and getattr(m, k) != v:
                    setattr(m, k, v)
        if isinstance(vars(m).get("np"), int):
            m.np = sum(p.numel() for p in m.parameters())


def width_mismatches(model: nn.Module) -> list[str]:
    """'module.attr: stored X, layers imply Y' for every covered attribute out of step with the layers (empty when
    the model is consistent); used by the conformance tests."""
    bad = []
    for name, m in model.named_modules():
        rule = rule_for(m) if _checked(m) else None
        if rule is None:
            continue
        for k, v in rule.derive(m).items():
            if k in vars(m) and getattr(m, k) != v:
                bad.append(f"{name}.{k}: stored {getattr(m, k)!r}, layers imply {v!r}")
    return bad


def mark_yaml_pruned(model: nn.Module) -> None:
    """Make a pruned model's `yaml` refuse a rebuild by its framework, keeping what loading and inference read.

    Idempotent; the original values are kept under PRUNED_MARK (see `unmarked_yaml`). A yaml that is no model dict
    (no backbone/head) is left alone.
    - YOLOv5/YOLOv7 (a yaml with `anchors`): the first layer's module becomes PRUNED_MODULE. Why there: their
      parse_model evals every module name (only argument NameErrors are suppressed) and the first layer is reached
      in every release; nc, anchors, multiples, ch and the layer count stay as they were.
    - ultralytics: parse_model looks up `scales[scale]` before building any layer; `scale` becomes PRUNED_MESSAGE,
      no key of `scales`, so `DetectionModel(model.yaml)` (`YOLO(p).train()`, resume) raises `KeyError: '<message>'`.
    """
    d = getattr(model, "yaml", None)
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        return
    mark = d.get(PRUNED_MARK)
    if "anchors" in d:
        if isinstance(mark, dict) and "scale" in mark:  # marked the ultralytics way by an older version: redo
            clean = unmarked_yaml(d)
            d.clear()
            d.update(clean)
            mark = None
        if mark or not d["backbone"]:
            return
        f, n, m, args = d["backbone"][0]
        d[PRUNED_MARK] = {"module": m}
        d["backbone"] = [[f, n, PRUNED_MODULE, args], *d["backbone"][1:]]
        return
    if mark:
        return
    scale = d.get("scale")
    scales = d.get("scales") or {}
    if not scales:  # a yaml without scales: one entry reproducing its own multiples keeps the lookup reachable
        scales = {scale or "model": [d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), 1 << 30]}
    d[PRUNED_MARK] = {"scale": scale, "scales": d.get("scales")}
    d["scales"] = scales
    d["scale"] = PRUNED_MESSAGE


def is_yaml_pruned(cfg) -> bool:
    """True for a model yaml (dict) that mark_yaml_pruned marked."""
    return isinstance(cfg, dict) and bool(cfg.get(PRUNED_MARK))


def unmarked_yaml(cfg: dict) -> dict:
    """A deep copy of a model yaml with mark_yaml_pruned undone: the unpruned architecture it was pruned from
    (an unmarked yaml comes back as a plain copy). For comparisons only: a model built from it is not the pruned one."""
    d = copy.deepcopy(cfg)
    mark = d.pop(PRUNED_MARK, None)
    if not isinstance(mark, dict):
        return d
    if "module" in mark and d.get("backbone") and d["backbone"][0][2] == PRUNED_MODULE:
        d["backbone"][0][2] = mark["module"]
    for k in ("scale", "scales"):
        if k not in mark:  # older marks kept the scale only; the scales entry they added reproduces the multiples
            continue
        if mark[k] is None:
            d.pop(k, None)
        else:
            d[k] = mark[k]
    return d
