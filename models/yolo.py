# AGPL-3.0 License
"""Anchor-based YOLO detectors (YOLOv5 v5.0/v6+, YOLOv7) built from yaml or unpickled from releases.

`Model`, `Detect` and `IDetect` carry the names official checkpoints pickle. Yaml parsing never
evaluates strings: module names resolve through a registry, activations through a tiny parser.
"""

from __future__ import annotations

import ast
import math
import re
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from models import common
from models.common import (
    C3,
    SPP,
    SPPCSPC,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    Concat,
    Conv,
    DWConv,
    Focus,
    ImplicitA,
    ImplicitM,
    RepConv,
)

MODELS_DIR = Path(__file__).resolve().parent


def _grid(na: int, ny: int, nx: int, stride: float, anchors: torch.Tensor):
    """Cell offsets (minus 0.5, so xy = (2σ + grid)·stride) and pixel anchor sizes for one level."""
    d, t = anchors.device, anchors.dtype
    y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
    yv, xv = torch.meshgrid(y, x, indexing="ij")
    grid = torch.stack((xv, yv), 2).expand(1, na, ny, nx, 2) - 0.5
    anchor_grid = (anchors * stride).view(1, na, 1, 1, 2).expand(1, na, ny, nx, 2)
    return grid, anchor_grid


class Detect(nn.Module):
    """YOLOv5 anchor-based head: per level a 1x1 conv to na·(nc+5) channels.

    Training returns the raw level maps; eval returns (decoded boxes (bs, N, 5+nc) in xywh pixels, maps).
    Grids are rebuilt in every forward from `anchors` and `stride`, so checkpoints of any release work
    whatever grid/anchor_grid caches they pickled.
    """

    stride = None
    dynamic = False
    export = False

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def _head(self, i, x):
        return self.m[i](x)

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self._head(i, x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                grid, anchor_grid = _grid(self.na, ny, nx, float(self.stride[i]), self.anchors[i].to(x[i].dtype))
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.no - 4), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1), x)


class IDetect(Detect):
    """YOLOv7 head: Detect with implicit knowledge (ImplicitA before, ImplicitM after each conv)."""

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__(nc, anchors, ch)
        del self.anchor_grid  # YOLOv7 keeps pixel anchors as a buffer, not a list
        self.register_buffer("anchor_grid", self.anchors.clone().view(self.nl, 1, -1, 1, 1, 2))  # YOLOv7 layout
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def _head(self, i, x):
        return self.im[i](self.m[i](self.ia[i](x)))


HEADS = (Detect, IDetect)

# Modules a yaml may name. Adding a block = importing it here and, if it maps c1->c2, listing it below.
REGISTRY = {
    c.__name__: c
    for c in (Conv, DWConv, Bottleneck, BottleneckCSP, C3, SPP, SPPF, Focus, Concat, Detect, IDetect, RepConv, SPPCSPC)
}
REGISTRY.update({"MP": common.MP, "SP": common.SP})
CHANNEL_BLOCKS = (Conv, DWConv, Bottleneck, BottleneckCSP, C3, SPP, SPPF, Focus, RepConv, SPPCSPC)
REPEAT_INSIDE = (BottleneckCSP, C3, SPPCSPC)  # blocks whose depth argument is 'n', not module repetition

_ACT = re.compile(r"^nn\.(\w+)\((.*)\)$")


def _resolve_module(name: str):
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("nn."):
        m = getattr(nn, name[3:], None)
        if isinstance(m, type) and issubclass(m, nn.Module):
            return m
    raise ValueError(f"model yaml names unknown module '{name}'; known: {', '.join(sorted(REGISTRY))} and torch.nn.*")


def _resolve_arg(a, namespace: dict):
    """Yaml args are literals, names from the yaml ('nc', 'anchors') or 'nn.Act(args)'; nothing is eval'd."""
    if not isinstance(a, str):
        return a
    if a in namespace:
        return namespace[a]
    if a == "None":
        return None
    m = _ACT.match(a.replace(" ", ""))
    if m:
        cls = _resolve_module("nn." + m.group(1))
        args = ast.literal_eval(f"({m.group(2)},)") if m.group(2) else ()
        return cls(*args)
    return a  # plain strings such as 'nearest'


def make_divisible(x, divisor):
    return math.ceil(x / divisor) * divisor


def parse_model(d: dict, ch: list[int]):
    """Build (nn.Sequential of layers, save list) from a YOLOv5/YOLOv7 model dict."""
    anchors, nc, gd, gw = d["anchors"], d["nc"], d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    act = d.get("activation")
    previous_act = Conv.default_act
    if act:  # YOLOv5 yamls may set the default activation, e.g. 'nn.LeakyReLU(0.1)'
        Conv.default_act = _resolve_arg(act, {})
    try:
        return _build_layers(d, ch, anchors, nc, gd, gw)
    finally:
        Conv.default_act = previous_act  # the yaml's choice must not leak into later builds


def _build_layers(d, ch, anchors, nc, gd, gw):
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    namespace = {"nc": nc, "anchors": anchors}

    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        m = _resolve_module(m) if isinstance(m, str) else m
        args = [_resolve_arg(a, namespace) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in CHANNEL_BLOCKS:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in REPEAT_INSIDE:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m in HEADS:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # number of anchors -> placeholder anchors
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        m_.i, m_.f, m_.type = i, f, f"{m.__module__}.{m.__name__}"
        m_.np = sum(p.numel() for p in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def load_model_yaml(cfg) -> dict:
    """Read a model yaml by path, or by name from models/ (e.g. 'yolov5s.yaml', 'v5.0/yolov5s.yaml')."""
    if isinstance(cfg, dict):
        return deepcopy(cfg)
    p = Path(cfg)
    if not p.exists():
        hits = [MODELS_DIR / p, *sorted(MODELS_DIR.rglob(p.name))]
        p = next((h for h in hits if h.exists()), p)
    if not p.exists():
        raise FileNotFoundError(f"model yaml '{cfg}' not found (looked in ./ and {MODELS_DIR})")
    d = yaml.safe_load(p.read_text())
    d["yaml_file"] = p.name
    return d


class Model(nn.Module):
    """YOLOv5 / YOLOv7 detection model: a sequential list of layers with routing (`f`) and a head."""

    def __init__(self, cfg="yolov5s.yaml", ch=3, nc=None, anchors=None):
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        if anchors:
            self.yaml["anchors"] = round(anchors)
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.names = {i: str(i) for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)

        m = self.model[-1]
        if isinstance(m, HEADS):
            s = 256
            m.inplace = self.inplace
            m.stride = torch.tensor([s / x.shape[-2] for x in self._forward_once(torch.zeros(1, ch, s, s))])
            check_anchor_order(m)
            m.anchors /= m.stride.view(-1, 1, 1)
            if isinstance(m, IDetect):
                m.anchor_grid.copy_((m.anchors * m.stride.view(-1, 1, 1)).view_as(m.anchor_grid))
            self.stride = m.stride
            self._initialize_biases()
        initialize_weights(self)

    def forward(self, x, augment=False, profile=False, visualize=False):
        return self._forward_once(x)

    def _forward_once(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self):
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            init_head_bias(mi, m.na, m.nc, float(s))

    def fuse(self):
        """Fold BatchNorm into convs and RepConv branches into one conv, for inference."""
        for m in self.model.modules():
            if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                m.bn = nn.Identity()
            elif isinstance(m, RepConv) and not hasattr(m, "rbr_reparam"):
                fuse_repconv(m)
        return self


@torch.no_grad()
def init_head_bias(conv: nn.Conv2d, na: int, nc: int, stride: float) -> None:
    """A fresh anchor-based head's priors, added in place to the bias (na·(nc+5),) of one level's output conv.

    Objectness: log(8 / (640 / stride)²), about 8 objects per 640-pixel image; classes: log(0.6 / (nc - 0.99999)),
    a class probability of about 0.6 / nc (≈ 1 for nc = 1). Source: YOLOv5 models/yolo.py
    `Model._initialize_biases` (YOLOv7 uses the same rule with 0.99). Used by fresh builds and by
    `models.loader.reset_classes`, so a new class head starts where a fresh model of that nc would.
    """
    b = conv.bias.view(na, nc + 5)
    b[:, 4] += math.log(8 / (640 / stride) ** 2)
    b[:, 5:] += math.log(0.6 / (nc - 0.99999))


def check_anchor_order(m):
    """Make anchor order (small to large) agree with stride order."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        m.anchors[:] = m.anchors.flip(0)


def initialize_weights(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (b_conv - bn.running_mean) * scale)
    return fused.requires_grad_(False)


@torch.no_grad()
def fuse_repconv(m: RepConv):
    """Merge RepConv's 3x3, 1x1 and identity branches into `rbr_reparam`."""
    k3 = fuse_conv_and_bn(m.rbr_dense[0], m.rbr_dense[1])
    k1 = fuse_conv_and_bn(m.rbr_1x1[0], m.rbr_1x1[1])
    w = k3.weight + nn.functional.pad(k1.weight, [1, 1, 1, 1])
    b = k3.bias + k1.bias
    if m.rbr_identity is not None:
        bn = m.rbr_identity
        cin = m.in_channels // m.groups
        eye = torch.zeros_like(k3.weight)
        for c in range(m.in_channels):
            eye[c, c % cin, 1, 1] = 1.0
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = w + eye * scale.view(-1, 1, 1, 1)
        b = b + bn.bias - bn.running_mean * scale
    k3.weight.copy_(w)
    k3.bias.copy_(b)
    m.rbr_reparam = k3
    for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
        delattr(m, name)
    m.deploy = True
