# AGPL-3.0 License
"""Feature distillation for anchor-based heads (YOLOv5, YOLOv7): the neck outputs that feed `Detect` are pulled
towards the teacher's, through a learned 1x1 projector per level (pruning narrows the student's channels).

The same idea as ultralytics' `DistillationModel` (engine/distill_ultralytics.py): per level, the squared error
between projector(student feature) and the teacher feature, weighted at each cell by how sure the teacher is that
an object is there (here sigmoid(objectness), the highest over the level's anchors), normalized by the weights'
sum and the channel count.

Hooks capture the features only for the duration of one forward (`capture`), so nothing of the distillation is
attached to the student between batches: deep copies (EMA, checkpoints) never see it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from models.loader import detection_head
from utils.general import UsageError


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
