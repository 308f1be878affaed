# AGPL-3.0 License
"""Distillation from a teacher (compress.py: the unpruned input model) while fine-tuning: head outputs, features
of the levels feeding the head, or both (`Distiller`; `--distill-mode output|feature|both`).

Output distillation (seed 004, REFERENCE §6): the student's raw head outputs are pulled towards a
teacher's, weighted by how sure the teacher is that an object is there.

Anchor-based heads: per level, w = sigmoid(teacher objectness); MSE of the raw box, objectness and class
outputs, each multiplied by w and by the loss's box/obj/cls gains. Ultralytics heads have no objectness:
w = the teacher's highest class probability per anchor point; MSE of the box distribution and class logits.

The teacher is frozen in eval mode (the reference leaves it in train mode and its BN statistics drift)
and may be wider than the student: only the head outputs, whose shapes pruning never changes, meet.

Feature distillation: engine/distill_ultralytics.py (ultralytics' DistillationModel) and engine/distill_features.py
(anchor-based heads, the same idea); learned projectors map the pruned student's channels to the teacher's. The
projectors are trained with the student (`add_param_group`) but belong to the distiller, never to the model:
checkpoints stay plain models. The teacher's forward and the distillation losses are timed; `finish` prints and
returns their share of the epoch time and the memory they take.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn as nn

from engine.distill_features import AnchorFeatureKD
from engine.distill_ultralytics import UltralyticsFeatureKD
from models.loader import is_anchor_based
from utils.files import write_text
from utils.general import LOGGER, UsageError

DistillMode = Literal["output", "feature", "both"]
DISTILL_MODES: tuple[str, ...] = get_args(DistillMode)


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


class Distiller:
    """Output and/or feature distillation for one training run.

    Use: `preds = d.student_forward(net, imgs)` (features captured during that forward only), then
    `loss += d(preds, imgs)` (one teacher forward serves both terms); `d.add_param_group(optimizer, hyp)` before the
    LR scheduler is built; `d.callbacks()` for the trainer (epoch timing, projector gradients under DDP);
    `d.finish(save_dir)` at the end.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, mode: DistillMode = "both", weight: float = 1.0,
                 feature_weight: float = 1.0, gains: dict | None = None, imgsz: int = 640):
        if mode not in DISTILL_MODES:
            raise UsageError(f"--distill-mode {mode!r}: choose one of {', '.join(DISTILL_MODES)}")
        check_pair(teacher, student)
        self.mode = mode
        self.output = OutputDistiller(teacher, student, gains, weight) if mode in ("output", "both") else None
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.features = None
        if mode in ("feature", "both"):
            device = next(student.parameters()).device
            self.features = AnchorFeatureKD(teacher, student, imgsz, device) if is_anchor_based(student) \
                else UltralyticsFeatureKD(teacher, student, imgsz)
        self.feature_weight = feature_weight
        self._s_feats: dict = {}
        self.seconds = 0.0  # teacher forwards and distillation losses, this process
        self.epoch_seconds: list[float] = []
        self.held_bytes = 0  # CUDA: the most memory a batch's distillation kept allocated until its backward
        self._epoch_t0 = None

    # ------------------------------------------------------------------ the loop
    def student_forward(self, net: nn.Module, imgs: torch.Tensor):
        """The student's forward, with its head-input features captured (for the feature term)."""
        if self.features is None:
            return net(imgs)
        student = getattr(net, "module", net)  # DistributedDataParallel: hooks on the wrapped model
        with self.features.student_capture(student) as feats:
            preds = net(imgs)
        self._s_feats = dict(feats)
        return preds

    def __call__(self, student_raw, img: torch.Tensor) -> torch.Tensor:
        """The distillation loss for one batch, scaled by the batch size like the detection loss."""
        cuda = img.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(img.device)
            mem0 = torch.cuda.memory_allocated(img.device)
        t0 = time.perf_counter()
        with ExitStack() as stack, torch.no_grad():
            t_feats = stack.enter_context(self.features.teacher_capture(self.teacher) if self.features is not None
                                          else nullcontext({}))
            t_raw = raw_outputs(self.teacher(img))
        loss = img.new_zeros(())
        if self.output is not None:
            loss = loss + self.output.loss(raw_outputs(student_raw), t_raw) * self.output.weight
        if self.features is not None:
            loss = loss + self.features.loss(self._s_feats, t_feats, t_raw) * self.feature_weight
            self._s_feats = {}
        loss = loss * img.shape[0]
        if cuda:
            torch.cuda.synchronize(img.device)
            self.held_bytes = max(self.held_bytes, torch.cuda.memory_allocated(img.device) - mem0)
        self.seconds += time.perf_counter() - t0
        return loss

    def parameters(self) -> list[nn.Parameter]:
        """The projectors' parameters (trained with the student, never saved with it)."""
        return list(self.features.projector.parameters()) if self.features is not None else []

    def add_param_group(self, optimizer: torch.optim.Optimizer, hyp: dict) -> None:
        """The projectors as one more parameter group (decayed like conv weights); call before the LR scheduler."""
        if self.parameters():
            optimizer.add_param_group({"params": self.parameters(), "weight_decay": hyp.get("weight_decay", 5e-4)})

    # ------------------------------------------------------------------ trainer callbacks
    def callbacks(self) -> dict:
        return {"on_train_epoch_start": [self._epoch_start], "on_train_epoch_end": [self._epoch_end],
                "on_after_backward": [self._sync_grads]}

    def _epoch_start(self, trainer) -> None:
        self._epoch_t0, self._epoch_s0 = time.perf_counter(), self.seconds

    def _epoch_end(self, trainer) -> None:
        if self._epoch_t0 is not None:
            self.epoch_seconds.append((time.perf_counter() - self._epoch_t0, self.seconds - self._epoch_s0))

    def _sync_grads(self, trainer) -> None:
        """Under DDP the projectors sit outside the wrapper: average their gradients over the processes."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()

    # ------------------------------------------------------------------ the cost
    def weight_bytes(self) -> int:
        """Memory of what distillation adds to the run's weights: the teacher and the projectors."""
        tensors = [*self.teacher.parameters(), *self.teacher.buffers(), *self.parameters()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def summary(self) -> dict:
        epochs = self.epoch_seconds
        epoch_s = sum(e for e, _ in epochs) / len(epochs) if epochs else 0.0
        kd_s = sum(k for _, k in epochs) / len(epochs) if epochs else 0.0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out = {"mode": self.mode, "epochs": len(epochs), "epoch_seconds": round(epoch_s, 3),
               "distill_seconds_per_epoch": round(kd_s, 3), "share": round(kd_s / epoch_s, 4) if epoch_s else None,
               "teacher_projector_mb": round(self.weight_bytes() / 2**20, 2),
               "projector_params": sum(p.numel() for p in self.parameters())}
        if torch.cuda.is_available() and self.teacher_device().type == "cuda":
            out["cuda_held_mb"] = round(self.held_bytes / 2**20, 1)
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            out["peak_rss_mb"] = round(rss / 2**20, 1)
        return out

    def teacher_device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    def finish(self, save_dir: Path | None = None) -> dict:
        """The cost line (and distill.json in `save_dir`); returns the summary."""
        s = self.summary()
        mem = f"CUDA {s['cuda_held_mb']} MB held per batch (run peak {s['cuda_max_allocated_mb']} MB allocated)" \
            if "cuda_held_mb" in s else f"process peak RSS {s['peak_rss_mb']} MB"
        share = f" ({100 * s['share']:.1f}%)" if s["share"] is not None else ""
        LOGGER.info(f"distillation ({self.mode}): {s['distill_seconds_per_epoch']:.2f} s of {s['epoch_seconds']:.2f} s "
                    f"per epoch{share} in teacher forwards and distillation losses; teacher + projectors "
                    f"{s['teacher_projector_mb']} MB; {mem}")
        if save_dir is not None:
            write_text(Path(save_dir) / "distill.json", json.dumps(s, indent=2))
        return s
