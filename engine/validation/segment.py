# AGPL-3.0 License
"""Segmentation models scored as ultralytics' SegmentationValidator (`yolo val task=segment`) scores them: box and
mask precision, recall, mAP50 and mAP50-95.

ultralytics' own code does every step (dataset resize, preprocess, NMS with the mask coefficients, mask decoding
from the protos, matching, `SegmentMetrics`); the loop is ours and the model object is used as it is (never rebuilt
from its yaml), as for detection (engine.validation.ultralytics). The loader must carry masks: data.tasks.for_task
sets `task: segment` in the data dict the loader is built from.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ultralytics.models.yolo.segment import SegmentationValidator
from ultralytics.utils import TQDM
from ultralytics.utils.nms import non_max_suppression

from engine.validation.common import (
    NO_TIME_LIMIT,
    TABLE_HEADER,
    LossMeter,
    ValResult,
    ValSettings,
    eval_setup,
    speed_ms,
    use_convention,
)
from utils.general import UsageError


class _Validator(SegmentationValidator):
    """SegmentationValidator whose NMS has no wall-clock limit (a reproducible metric must not depend on the
    machine's load); otherwise its own postprocess: NMS over boxes, classes and mask coefficients, then the masks
    decoded from the protos."""

    def postprocess(self, preds) -> list[dict]:
        proto = preds[0][1] if isinstance(preds[0], tuple) else preds[1]
        outputs = non_max_suppression(preds[0], self.args.conf, self.args.iou, nc=self.nc, multi_label=True,
                                      agnostic=self.args.single_cls or self.args.agnostic_nms,
                                      max_det=self.args.max_det, end2end=self.end2end, max_time_img=NO_TIME_LIMIT)
        imgsz = [4 * x for x in proto.shape[2:]]
        out = []
        for i, x in enumerate(outputs):
            pred = {"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5]}
            pred["masks"] = self.process(proto[i], x[:, 6:], pred["bboxes"], shape=imgsz)
            out.append(pred)
        return out


def _metrics(m, names: dict[int, str], which: str) -> dict:
    """{'precision', 'recall', 'map50', 'map50_95', 'per_class'} of SegmentMetrics' box or seg part."""
    part = getattr(m, which)
    p, r, map50, map50_95 = (float(x) for x in part.mean_results())
    rows = [{"class": int(c), "name": names.get(int(c), str(c)), **dict(zip(("p", "r", "map50", "map50_95"),
            (float(x) for x in part.class_result(i))))} for i, c in enumerate(m.ap_class_index)]
    return {"precision": p, "recall": r, "map50": map50, "map50_95": map50_95, "per_class": rows}


@torch.no_grad()
def validate_segment(model: nn.Module, loader, names: dict[int, str], settings: ValSettings,
                     device: torch.device | str = "cpu", save_dir: Path | None = None, plotter=None,
                     criterion=None) -> tuple[ValResult, list[dict]]:
    """Score a segmentation model over `loader` with ultralytics' SegmentationValidator.

    Args:
        model: an ultralytics SegmentationModel (fused or not).
        loader: data.datasets.build_val_loader on data whose `task` is segment (masks in each batch).
        names: class index -> name; settings: thresholds (iou_thres None means 0.7); save_txt, save_json and the
            plots are detection-only and refused here.
        device: where the model runs; save_dir, plotter: unused (accepted for the common signature).
        criterion: models.loss.build_criterion of the model: also the per-term validation losses (box, seg, cls, dfl).
    Returns:
        (ValResult: box metrics in its detection fields, mask metrics in `tasks['mask']`, no COCO-json rows).
    Raises:
        UsageError: save_txt / save_json asked for, or a loader without masks.
    """
    s = settings
    if s.save_txt or s.save_json:
        raise UsageError("--save-txt and --save-json write boxes only: not available for a segmentation model")
    if plotter is not None:
        plotter = None  # detection figures only
    use_convention(loader, "ultralytics")
    device, half, was_training, _ = eval_setup(model, device, s.half, False)
    tmp = tempfile.TemporaryDirectory()
    v = _Validator(save_dir=Path(tmp.name), args=dict(
        conf=s.conf_thres, iou=s.iou("ultralytics"), max_det=s.max_det, single_cls=s.single_cls, plots=False,
        save_json=False, save_txt=False, verbose=False, quantize=16 if half else None, task="segment"))
    v.dataloader, v.data, v.training = loader, {}, False
    v.device = next(model.parameters()).device
    v.init_metrics(model)
    dt, losses = [0.0, 0.0, 0.0], LossMeter(criterion, device)
    try:
        for batch in TQDM(loader, desc=TABLE_HEADER, total=len(loader), disable=not s.progress):
            if "masks" not in batch:
                raise UsageError("the validation loader has no masks: build it from data.tasks.for_task(data, "
                                 "'segment') (a segmentation dataset)")
            t0 = time.perf_counter()
            batch = v.preprocess(batch)
            t1 = time.perf_counter()
            out = model(batch["img"])
            t2 = time.perf_counter()
            losses.add(out, batch)
            preds = v.postprocess(out)
            t3 = time.perf_counter()
            v.update_metrics(preds, batch)
            dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, t3 - t2))]
        v.get_stats()
    finally:
        if was_training:
            model.train()
        if half:
            model.float()
        tmp.cleanup()
    names = names if not s.single_cls else {0: "item"}
    m, res = v.metrics, ValResult(images=v.seen, convention="ultralytics")
    res.speed_ms = speed_ms(dt, v.seen)
    nt = m.nt_per_class if m.nt_per_class is not None else np.zeros(len(names), int)
    res.instances = int(nt.sum())
    box = _metrics(m, names, "box")
    res.precision, res.recall, res.map50, res.map50_95 = (box[k] for k in ("precision", "recall", "map50", "map50_95"))
    res.maps = [float(x) for x in m.box.maps][: len(names)] if len(m.ap_class_index) else [0.0] * len(names)
    for row in box["per_class"]:
        c = row["class"]
        res.per_class.append({**row, "images": int(m.nt_per_image[c]), "instances": int(nt[c])})
    res.tasks = {"mask": _metrics(m, names, "seg")}
    res.losses = losses.mean()
    return res, []
