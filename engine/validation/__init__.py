# AGPL-3.0 License
"""Detection validation for every family: `validate(model, loader, names, settings)` picks the convention by the
model's family (YOLOv5/YOLOv7 -> engine.validation.yolov5, ultralytics -> engine.validation.ultralytics), and a
segmentation model's box and mask metrics by engine.validation.segment.

Modules: common (ValSettings, ValResult, conventions, shared helpers), yolov5, ultralytics and segment (the loops),
ap (YOLOv5's AP), coco (pycocotools), plots (val.py's figures).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from engine.validation.coco import annotation_json, coco_evaluate
from engine.validation.common import (
    CONVENTION_NAMES,
    CONVENTIONS,
    DEFAULT_BATCH,
    DEFAULT_IOU,
    Convention,
    ValResult,
    ValSettings,
    format_table,
    select_head,
    to_nms_format,
    validation_convention,
    write_json,
)
from engine.validation.segment import validate_segment
from engine.validation.ultralytics import validate_ultralytics
from engine.validation.yolov5 import validate_yolov5
from models.loader import model_task

__all__ = ("CONVENTIONS", "CONVENTION_NAMES", "Convention", "DEFAULT_BATCH", "DEFAULT_IOU", "ValResult",
           "ValSettings", "annotation_json", "coco_evaluate", "format_table", "select_head", "to_nms_format",
           "validate", "validation_convention", "write_json")


def validate(model: nn.Module, loader, names: dict[int, str], settings: ValSettings | None = None, *,
             device: torch.device | str = "cpu", save_dir: Path | None = None, plotter=None, criterion=None,
             **kw) -> tuple[ValResult, list[dict]]:
    """Run the model over `loader` and compute detection metrics with its family's convention.

    Args:
        model: the model to score (put in eval mode for the call, its training flag restored after).
        loader: data.datasets.build_val_loader; names: class index -> name.
        settings: ValSettings; keyword fields (conf_thres=..., single_cls=..., progress=...) override it.
        device: where the model runs. save_dir: receives labels/ with save_txt.
        plotter: engine.validation.plots.ValPlots, fed each image's detections and labels and the matching stats.
        criterion: models.loss.build_criterion of the same model: also the per-task validation losses, from the
            raw head outputs the model returns beside its detections in eval mode (as YOLOv5's val.py computes
            them during training); left out when the head returns none (e.g. a fused end-to-end head).
    Returns:
        (ValResult, COCO-json prediction rows; empty unless save_json).
    Raises:
        TypeError: an unknown keyword; UsageError: a threshold out of range.
    """
    s = ValSettings.of(settings, **kw)
    run = validate_ultralytics if validation_convention(model) == "ultralytics" else validate_yolov5
    if model_task(model) == "segment":
        run = validate_segment  # box and mask metrics
    return run(model, loader, names, s, device=device, save_dir=save_dir, plotter=plotter, criterion=criterion)
