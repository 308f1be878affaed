# AGPL-3.0 License
"""Distillation losses between a teacher and a (pruned) student of one family; the training side (one teacher
forward per batch, projectors in the optimizer, timing) is engine/distill.py.

Output distillation (seed 004, REFERENCE §6), `OutputDistiller`: the student's raw head outputs are pulled towards
the teacher's, weighted by how sure the teacher is that an object is there. Anchor-based heads: per level,
w = sigmoid(teacher objectness); MSE of the raw box, objectness and class outputs, each multiplied by w and by the
loss's box/obj/cls gains. Ultralytics heads have no objectness: w = the teacher's highest class probability per
anchor point; MSE of the box distribution and class logits. The teacher is frozen in eval mode (the reference
leaves it in train mode and its BN statistics drift) and may be wider than the student: head outputs keep their
shapes after pruning.

Feature distillation: the outputs of the layers that feed the head (one per level) are pulled towards the
teacher's through a learned projector per level (pruning narrows the student's channels), by a squared error
weighted at each cell by the teacher's confidence, normalized by the weights' sum and the channel count.
- `UltralyticsFeatureKD` (v8 .. 26) goes through ultralytics' own `DistillationModel`
  (ultralytics/nn/distill_model.py, what `model.train(distill_model=...)` uses): the levels (`get_distill_layers`),
  the projectors it builds from a dummy forward (Conv 1x1, ReLU, Conv 1x1), the frozen teacher with its feature
  hooks, `decouple_outputs` and the score-weighted L2 `loss_sl2`. Its `loss()` is not called: it runs the student
  itself, with ultralytics' criterion, outside the trainer's DistributedDataParallel wrapper, and it is meant to
  *be* the trained model: its hooks stay on the student, so every deep copy of the student (EMA, checkpoints)
  would carry them. The wrapper is built on a copy of the student (its hooks die with that copy), and the few
  lines of `loss()` that combine the pieces are repeated in `UltralyticsFeatureKD.loss`.
- `AnchorFeatureKD` (YOLOv5, YOLOv7): the same idea; 1x1 conv projectors, weights = sigmoid(objectness), the
  highest over the level's anchors.
The trained student is hooked only for the length of one forward (`capture`): nothing of the distillation is
attached to it between batches. Projectors start as the identity where a level kept its width.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
import torch.nn as nn
from ultralytics.nn.distill_model import DistillationModel

from models.loader import detection_head, is_anchor_based
from utils.general import UsageError


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """One UsageError line when `teacher` cannot teach `student`: another kind of head or another class count."""
    if is_anchor_based(teacher) != is_anchor_based(student):
        raise UsageError("--teacher has a different kind of detection head than the student "
                         "(anchor-based vs anchor-free); distil between models of one family")
    if int(teacher.nc) != int(student.nc):
        raise UsageError(f"--teacher predicts {teacher.nc} classes, the student {student.nc}; they must match")


def raw_outputs(out):
    """The per-level raw head outputs from a model's output in train mode (list/dict) or eval mode (y, raw)."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, dict)):
        return out[1]
    return out


class OutputDistiller:
    def __init__(self, teacher: nn.Module, student: nn.Module, gains: dict | None = None, weight: float = 1.0):
        check_pair(teacher, student)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.anchor_based = is_anchor_based(student)
        g = gains or {}
        self.gains = (g.get("box", 1.0), g.get("obj", 1.0), g.get("cls", 1.0))
        self.weight = weight

    @torch.no_grad()
    def teacher_outputs(self, img: torch.Tensor):
        self.teacher.eval()
        return raw_outputs(self.teacher(img))

    def __call__(self, student_raw, img: torch.Tensor) -> torch.Tensor:
        """Distillation loss for one batch, scaled by the batch size like the detection loss."""
        return self.loss(student_raw, self.teacher_outputs(img)) * self.weight * img.shape[0]

    def loss(self, student_raw, teacher_raw) -> torch.Tensor:
        """The unweighted loss between raw head outputs (not scaled by the batch size)."""
        if self.anchor_based:
            return self._anchor(student_raw, teacher_raw)
        return self._anchor_free(student_raw, teacher_raw)

    def _anchor(self, s_levels, t_levels) -> torch.Tensor:
        g_box, g_obj, g_cls = self.gains
        total = s_levels[0].new_zeros(())
        for s, t in zip(s_levels, t_levels):
            s, t = s.float(), t.float()
            w = t[..., 4:5].sigmoid()
            d = (s - t) ** 2 * w
            total = total + g_box * d[..., :4].mean() + g_obj * d[..., 4].mean() + g_cls * d[..., 5:].mean()
        return total

    def _anchor_free(self, s, t) -> torch.Tensor:
        if isinstance(s, dict) and "one2many" in s:  # end-to-end heads (YOLO26): the one-to-many branch
            s, t = s["one2many"], t["one2many"]
        if isinstance(s, dict):
            w = t["scores"].float().sigmoid().amax(1, keepdim=True)  # (bs, 1, anchors)
            box = ((s["boxes"].float() - t["boxes"].float()) ** 2 * w).mean()
            cls = ((s["scores"].float() - t["scores"].float()) ** 2 * w).mean()
            return box + cls
        total = s[0].new_zeros(())
        for si, ti in zip(s, t):  # older heads: per-level (bs, 4*reg_max + nc, h, w)
            w = ti[:, -int(self.teacher.nc):].float().sigmoid().amax(1, keepdim=True)  # classes are the tail
            total = total + (((si.float() - ti.float()) ** 2) * w).mean()
        return total


def head_inputs(model: nn.Module) -> list[int]:
    """Indices of the layers whose outputs the detection head reads, one per level (YOLOv7's auxiliary heads:
    the lead levels only)."""
    head = detection_head(model)
    f = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    return [int(i) % len(model.model) for i in f[: int(head.nl)]]


@contextmanager
def capture(model: nn.Module, layers: list[int]):
    """Within the block, the outputs of model.model[i] for i in `layers` land in the yielded dict (by position)."""
    feats: dict[int, torch.Tensor] = {}
    handles = []
    for k, i in enumerate(layers):
        def hook(module, inputs, output, k=k):
            feats[k] = output
        handles.append(model.model[i].register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def level_shapes(model: nn.Module, layers: list[int], imgsz: int, device) -> list[torch.Size]:
    """The feature shapes at `layers` for one blank image (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), capture(model, layers) as feats:
        model(torch.zeros(1, 3, imgsz, imgsz, device=device))
    model.train(was_training)
    return [feats[k].shape for k in range(len(layers))]


def projector(c_in: int, c_out: int) -> nn.Conv2d:
    """A 1x1 conv from student to teacher channels; the identity when the widths agree (an unpruned level)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1)
    if c_in == c_out:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(c_out).view(c_out, c_out, 1, 1))
            conv.bias.zero_()
    return conv


class AnchorFeatureKD:
    """Feature distillation between two anchor-based models of one family (teacher frozen by the caller)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, imgsz: int, device):
        self.t_layers, self.s_layers = head_inputs(teacher), head_inputs(student)
        if len(self.t_layers) != len(self.s_layers):
            raise UsageError(f"--teacher's head reads {len(self.t_layers)} feature levels, the student's "
                             f"{len(self.s_layers)}; distil between models with the same detection levels")
        t_shapes = level_shapes(teacher, self.t_layers, imgsz, device)
        s_shapes = level_shapes(student, self.s_layers, imgsz, device)
        if [s[-2:] for s in t_shapes] != [s[-2:] for s in s_shapes]:
            raise UsageError("--teacher's feature levels have other strides than the student's "
                             f"({[tuple(s[-2:]) for s in t_shapes]} vs {[tuple(s[-2:]) for s in s_shapes]} at "
                             f"{imgsz} px); distil between models with the same detection levels")
        self.projector = nn.ModuleList(projector(s[1], t[1]) for s, t in zip(s_shapes, t_shapes)).to(device)

    def student_capture(self, student: nn.Module):
        return capture(student, self.s_layers)

    def teacher_capture(self, teacher: nn.Module):
        return capture(teacher, self.t_layers)

    def input_conv(self, k: int) -> nn.Conv2d:
        """The conv of level k's projector that reads the student's channels."""
        return self.projector[k]

    def set_input_conv(self, k: int, conv: nn.Conv2d) -> None:
        self.projector[k] = conv

    def loss(self, s_feats: dict, t_feats: dict, t_raw) -> torch.Tensor:
        """Objectness-weighted L2 over the levels (not scaled by the batch size)."""
        total = None
        for k, proj in enumerate(self.projector):
            s = proj(s_feats[k].float())
            t = t_feats[k].float()
            w = t_raw[k][..., 4].float().sigmoid().amax(1)  # (bs, na, ny, nx, no) -> (bs, ny, nx)
            n, c = t.shape[:2]
            w = w.reshape(n, 1, -1)
            err = (s.reshape(n, c, -1) - t.reshape(n, c, -1)) ** 2
            level = (err * w).sum() / (w.sum() * c + 1e-9)
            total = level if total is None else total + level
        return total


def distill_layers(model: nn.Module) -> list[int]:
    """The head's input layers followed by the head itself (DistillationModel.get_distill_layers)."""
    return DistillationModel.get_distill_layers(model)


class UltralyticsFeatureKD:
    """Feature distillation between two ultralytics detection models (the teacher is frozen by the wrapper)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, imgsz: int):
        t_layers, s_layers = distill_layers(teacher), distill_layers(student)
        if len(t_layers) != len(s_layers):
            raise UsageError(f"--teacher's head reads {len(t_layers) - 1} feature levels, the student's "
                             f"{len(s_layers) - 1}; distil between models with the same detection levels")
        probe = copy.deepcopy(student)  # DistillationModel reads args.imgsz / args.dis and hooks the model it gets
        probe.args = SimpleNamespace(imgsz=imgsz, dis=1.0)  # the weight is applied by the caller
        self.dm = DistillationModel(teacher_model=teacher, student_model=probe)
        self.dm.student_model = None  # the probe and its hooks go; the teacher, its hooks and the projectors stay
        self.s_layers = list(self.dm.feats_idx[:-1])
        for seq in self.dm.projector:  # the identity where the widths agree (an unpruned level): no initial pull
            convs = [m for m in seq if isinstance(m, nn.Conv2d)]
            if all(c.in_channels == c.out_channels for c in convs):
                with torch.no_grad():
                    for c in convs:
                        c.weight.copy_(torch.eye(c.out_channels).view(c.out_channels, c.out_channels, 1, 1))
                        c.bias.zero_()

    @property
    def projector(self) -> nn.ModuleList:
        return self.dm.projector

    @property
    def teacher(self) -> nn.Module:
        return self.dm.teacher_model

    def student_capture(self, student: nn.Module):
        return capture(student, self.s_layers)

    def input_conv(self, k: int) -> nn.Conv2d:
        """The conv of level k's projector that reads the student's channels."""
        return self.dm.projector[k][0]

    def set_input_conv(self, k: int, conv: nn.Conv2d) -> None:
        self.dm.projector[k][0] = conv

    def teacher_capture(self, teacher: nn.Module):
        """The wrapper's own hooks fill its feature dict on every teacher forward; yield that."""
        feats = self.dm._teacher_feats  # noqa: SLF001  (the wrapper's hook target; read as its loss() reads it)
        feats.clear()
        return nullcontext(feats)

    def loss(self, s_feats: dict, t_feats: dict, t_raw=None) -> torch.Tensor:
        """DistillationModel.loss()'s distillation term for the features captured here (unweighted, no batch scale)."""
        dm = self.dm
        n = len(self.s_layers)
        head = t_feats[n]
        scores = (dm.decouple_outputs(head, branch="one2many")["scores"]
                  + dm.decouple_outputs(head, branch="one2one")["scores"]) / 2
        sizes = [t_feats[i].shape[-2] * t_feats[i].shape[-1] for i in range(n)]
        weights = tuple(p.float().sigmoid().max(dim=1, keepdim=True).values
                        for p in torch.split(scores, sizes, dim=-1))
        total = None
        for i in range(n):
            t = dm.decouple_outputs(t_feats[i]).float()
            s = dm.projector[i](dm.decouple_outputs(s_feats[i]).float())
            level = dm.loss_sl2(s, t, feat_idx=i, teacher_scores=weights)
            total = level if total is None else total + level
        t_feats.clear()
        return total
