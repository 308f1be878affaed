# AGPL-3.0 License
"""Output distillation (seed 004, REFERENCE §6): the student's raw head outputs are pulled towards a
teacher's, weighted by how sure the teacher is that an object is there.

Anchor-based heads: per level, w = sigmoid(teacher objectness); MSE of the raw box, objectness and class
outputs, each multiplied by w and by the loss's box/obj/cls gains. Ultralytics heads have no objectness:
w = the teacher's highest class probability per anchor point; MSE of the box distribution and class logits.

The teacher is frozen in eval mode (the reference leaves it in train mode and its BN statistics drift)
and may be wider than the student: only the head outputs, whose shapes pruning never changes, meet.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.loader import is_anchor_based
from utils.general import UsageError


def raw_outputs(out):
    """The per-level raw head outputs from a model's output in train mode (list/dict) or eval mode (y, raw)."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, dict)):
        return out[1]
    return out


class OutputDistiller:
    def __init__(self, teacher: nn.Module, student: nn.Module, gains: dict | None = None, weight: float = 1.0):
        if is_anchor_based(teacher) != is_anchor_based(student):
            raise UsageError("--teacher has a different kind of detection head than the student "
                             "(anchor-based vs anchor-free); distil between models of one family")
        if int(teacher.nc) != int(student.nc):
            raise UsageError(f"--teacher predicts {teacher.nc} classes, the student {student.nc}; they must match")
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
        t_raw = self.teacher_outputs(img)
        bs = img.shape[0]
        if self.anchor_based:
            loss = self._anchor(student_raw, t_raw)
        else:
            loss = self._anchor_free(student_raw, t_raw)
        return loss * self.weight * bs

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
