# AGPL-3.0 License
"""Fine-tune a pruned ultralytics model with ultralytics' own trainer, keeping its pruned structure.

ultralytics' `YOLO(p).train()` calls `trainer.get_model(cfg=model.yaml, weights=model)`, which builds a fresh
`DetectionModel` from the yaml and copies the weights whose shapes still match: on a pruned model that is the
unpruned architecture, mostly re-initialised (docs/benchmarks/ultralytics.md shows it on a pruned yolov8n).
Surgery marks the yaml of a pruned model so that this rebuild stops with one clear line
(prune.widths.mark_yaml_pruned); this trainer is the supported way around it:

    from ultralytics import YOLO
    from engine.ultralytics_trainer import PrunedDetectionTrainer

    model = YOLO("runs/compress/exp/pruned.pt")
    model.train(trainer=PrunedDetectionTrainer, data="coco128.yaml", epochs=30, imgsz=640)

A pruned segmentation model trains the same way with `PrunedSegmentationTrainer` (ultralytics' SegmentationTrainer:
its dataset with masks, v8SegmentationLoss, SegmentationValidator).

It trains the loaded model object itself (every other part of ultralytics' loop -- data, augmentation, loss, EMA,
validation, checkpoints -- is unchanged), and `--resume` of such a run works the same way. A dataset with another
number of classes gets a new class head, every other weight kept (models.loader.reset_classes).
"""

from __future__ import annotations

import copy

import torch.nn as nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer

import utils  # noqa: F401  (offline settings for ultralytics)
from models.loader import reset_classes
from prune.widths import is_yaml_pruned


class PrunedModelMixin:
    """get_model for any ultralytics task trainer: the given model object, never a rebuild from its yaml."""

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """The given weights' model itself (a deep copy in float32, trainable) with the dataset's classes.

        cfg: the model yaml (unused when weights are given); weights: an nn.Module or a checkpoint dict.
        Raises ValueError when no weights are given for a pruned yaml (e.g. `pretrained=False`): the widths of a
        pruned model exist only in its weights.
        """
        if isinstance(weights, dict):
            weights = weights.get("ema") or weights.get("model")
        if not isinstance(weights, nn.Module):
            if is_yaml_pruned(cfg):
                raise ValueError("a pruned model cannot be built from its yaml: train it from its weights "
                                 "(drop pretrained=False)")
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        model = copy.deepcopy(weights).float()
        for p in model.parameters():
            p.requires_grad_(True)
        if getattr(model, "criterion", None) is not None:
            model.criterion = None  # rebuilt by ultralytics for this run's hyperparameters
        nc = int(self.data["nc"])
        if int(model.model[-1].nc) != nc:
            reset_classes(model, nc)
        return self.set_model_names_for_load(model)


class PrunedDetectionTrainer(PrunedModelMixin, DetectionTrainer):
    """ultralytics DetectionTrainer that never rebuilds the model from its yaml."""


class PrunedSegmentationTrainer(PrunedModelMixin, SegmentationTrainer):
    """ultralytics SegmentationTrainer that never rebuilds the model from its yaml."""
