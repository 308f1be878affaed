# AGPL-3.0 License
"""Feature distillation for ultralytics models (v8 .. 26) through ultralytics' own `DistillationModel`
(ultralytics/nn/distill_model.py, what `model.train(distill_model=...)` uses).

What it gives us: the levels feeding the head (`get_distill_layers`), the projectors it builds from a dummy forward
(student -> teacher channels: Conv 1x1, ReLU, Conv 1x1), the frozen teacher with its feature hooks, the output
decoding (`decouple_outputs`) and the teacher-score-weighted L2 (`loss_sl2`).

What we do not take, and why: `DistillationModel.loss()` runs the student itself, with ultralytics' own criterion,
outside our loop's DistributedDataParallel wrapper, and it is meant to *be* the trained model: its hooks stay on the
student, so every deep copy of the student (EMA, checkpoints) would carry them. Here the wrapper is built on a copy of
the student (its hooks die with that copy); the trained student gets hooks only for the length of one forward
(engine/distill_features.capture), and the few lines of `loss()` that combine the pieces are repeated in `loss`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn as nn
from ultralytics.nn.distill_model import DistillationModel

from engine.distill_features import capture
from utils.general import UsageError


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

