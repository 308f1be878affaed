# AGPL-3.0 License
"""Distillation from a teacher (compress.py: the unpruned input model) while fine-tuning: head outputs, features of
the levels feeding the head, or both (`--distill-mode output|feature|both`). The losses are models/distill_loss.py;
here, their place in the training loop: one teacher forward per batch serves both, the projectors train in the
student's optimizer (`add_param_group`) but belong to the distiller, never to the model (checkpoints stay plain
models), and the teacher's forward and the losses are timed (`finish` prints and returns their share of the epoch
time and the memory they take).
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

from models.distill_loss import AnchorFeatureKD, OutputDistiller, UltralyticsFeatureKD, check_pair, raw_outputs
from models.loader import is_anchor_based
from utils.files import write_text
from utils.general import LOGGER, UsageError

__all__ = ("DISTILL_MODES", "Distiller", "DistillMode", "OutputDistiller")

DistillMode = Literal["output", "feature", "both"]
DISTILL_MODES: tuple[str, ...] = get_args(DistillMode)


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
        self._optimizer = self._group = None  # the optimizer and its group holding the projectors

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
            self._fit_projectors()
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
            self._optimizer, self._group = optimizer, optimizer.param_groups[-1]

    def _fit_projectors(self) -> None:
        """A student narrowed during the fine-tune (pruning in steps): a level whose width changed gets a fresh
        projector input conv, and the optimizer's projector group follows."""
        for k, feat in self._s_feats.items():
            conv = self.features.input_conv(k)
            if feat.shape[1] == conv.in_channels:
                continue
            LOGGER.info(f"distillation: the student's level {k} now has {feat.shape[1]} channels "
                        f"(was {conv.in_channels}); its projector input starts afresh")
            self.features.set_input_conv(k, nn.Conv2d(feat.shape[1], conv.out_channels, 1).to(conv.weight.device))
            if self._optimizer is not None:
                for p in conv.parameters():
                    self._optimizer.state.pop(p, None)
                self._group["params"] = self.parameters()

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
