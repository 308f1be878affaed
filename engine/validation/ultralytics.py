# AGPL-3.0 License
"""The ultralytics convention's loop (every ultralytics model): scored as ultralytics' DetectionValidator
(`yolo val`) scores it.

The convention is ultralytics' own code: its dataset resize, `DetectionValidator` preprocess, postprocess (NMS, or
none for an end-to-end head), box scaling, matching, `DetMetrics`, text and JSON writers; only the loop is ours, so
compress.py, train.py and val.py share it. How it differs from the YOLOv5 convention: engine.validation.common.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import TQDM
from ultralytics.utils.nms import non_max_suppression

from engine.validation.common import (
    NO_TIME_LIMIT,
    TABLE_HEADER,
    LossMeter,
    SaturationGuard,
    ValResult,
    ValSettings,
    eval_setup,
    speed_ms,
    use_convention,
)


def _make_validator(model, loader, save_dir: Path, conf, iou, max_det, single_cls, half, save_conf, class_map):
    """An ultralytics DetectionValidator set up for a model object and a loader built elsewhere (no AutoBackend,
    no run folder of its own, no plots); save_dir only receives what the caller writes."""
    v = DetectionValidator(save_dir=save_dir, args=dict(
        conf=conf, iou=iou, max_det=max_det, single_cls=single_cls, plots=False, save_json=False, save_txt=False,
        save_conf=save_conf, verbose=False, quantize=16 if half else None, task="detect"))
    v.dataloader, v.data, v.training = loader, {}, False  # standalone semantics (e.g. its max_det check)
    v.device = next(model.parameters()).device
    v.init_metrics(model)
    v.class_map = class_map
    return v


@torch.no_grad()
def validate_ultralytics(model: nn.Module, loader, names: dict[int, str], settings: ValSettings,
                         device: torch.device | str = "cpu", save_dir: Path | None = None, plotter=None,
                         criterion=None) -> tuple[ValResult, list[dict]]:
    """Score `model` over `loader` with ultralytics' DetectionValidator conventions.

    Args:
        model: an ultralytics DetectionModel (fused or not; its `end2end` flag picks the head, see
            engine.validation.common.select_head).
        loader: data.datasets.build_val_loader (switched to ultralytics' resize here).
        names: class index -> name; settings: thresholds and outputs (iou_thres None means 0.7).
        device: where the model runs; save_dir: receives labels/ with settings.save_txt.
        plotter: engine.validation.plots.ValPlots or None; criterion: models.loss.build_criterion or None.
    Returns:
        (ValResult with boxes in pixels of the original images, COCO-json prediction rows).
    """
    s = settings
    use_convention(loader, "ultralytics")
    device, half, was_training, class_map = eval_setup(model, device, s.half, s.coco_ids)
    tmp = None if save_dir is not None else tempfile.TemporaryDirectory()
    out_dir = Path(save_dir if save_dir is not None else tmp.name)
    v = _make_validator(model, loader, out_dir, s.conf_thres, s.iou("ultralytics"), s.max_det, s.single_cls, half,
                        s.save_conf, class_map)
    dt, guard, losses, stats = [0.0, 0.0, 0.0], SaturationGuard(s.conf_thres), LossMeter(criterion, device), []
    try:
        for batch in TQDM(loader, desc=TABLE_HEADER, total=len(loader), disable=not s.progress):
            t0 = time.perf_counter()
            batch = v.preprocess(batch)
            t1 = time.perf_counter()
            out = model(batch["img"])
            t2 = time.perf_counter()
            losses.add(out, batch)
            if not v.end2end:
                guard(out[0] if isinstance(out, (list, tuple)) else out)
            preds = _postprocess(v, out)
            t3 = time.perf_counter()
            v.update_metrics(preds, batch)
            if plotter is not None:
                stats += _plot_inputs(v, preds, batch, plotter)
            if s.save_txt or s.save_json:
                _save(v, preds, batch, out_dir / "labels" if s.save_txt else None, s.save_json)
            dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, t3 - t2))]
        v.get_stats()
        if plotter is not None:
            plotter.add_stats(stats)
    finally:
        if was_training:
            model.train()
        if half:
            model.float()
        if tmp is not None:
            tmp.cleanup()
    res = _result(v, names if not s.single_cls else {0: "item"}, dt)
    res.convention = "ultralytics"
    res.losses = losses.mean()
    if guard.note():
        res.notes.append(guard.note())
    return res, v.jdict


def _plot_inputs(v, preds, batch, plotter) -> list[tuple]:
    """Each image's detections and labels (letterboxed pixels, the space ultralytics matches in) to the plotter;
    returns the matching stats (tp (n, 10), conf, pred_cls, target_cls) per image for its curves."""
    rows = []
    for si, pred in enumerate(preds):
        pbatch = v._prepare_batch(si, batch)
        predn = v._prepare_pred(pred)
        tp = v._process_batch(predn, pbatch)["tp"]
        det = torch.cat([predn["bboxes"], predn["conf"][:, None], predn["cls"][:, None].float()], 1)
        plotter.add_image(det, pbatch["bboxes"] if len(pbatch["cls"]) else None, pbatch["cls"])
        rows.append((tp, predn["conf"].cpu().numpy(), predn["cls"].cpu().numpy(), pbatch["cls"].cpu().numpy()))
    return rows


def _postprocess(v, out) -> list[dict]:
    """DetectionValidator.postprocess (its NMS arguments, no NMS for an end-to-end head), without the wall-clock
    limit (SaturationGuard bounds broken models instead)."""
    outputs = non_max_suppression(out, v.args.conf, v.args.iou, nc=0, multi_label=True,
                                  agnostic=v.args.single_cls or v.args.agnostic_nms, max_det=v.args.max_det,
                                  end2end=v.end2end, max_time_img=NO_TIME_LIMIT)
    return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]


def _save(v, preds, batch, txt_dir: Path | None, save_json: bool) -> None:
    """Text labels (YOLO format, normalised to the original image) and COCO-json rows, with ultralytics' writers."""
    for si, pred in enumerate(preds):
        if not len(pred["cls"]):
            continue
        pbatch = v._prepare_batch(si, batch)
        predn = v.scale_preds(v._prepare_pred(pred), pbatch)
        if save_json:
            v.pred_to_json(predn, pbatch)
        if txt_dir is not None:
            txt_dir.mkdir(parents=True, exist_ok=True)
            v.save_one_txt(predn, v.args.save_conf, pbatch["ori_shape"], txt_dir / f"{Path(pbatch['im_file']).stem}.txt")


def _result(v, names: dict[int, str], dt: list[float]) -> ValResult:
    """DetMetrics -> ValResult (same fields as the YOLOv5 convention's)."""
    m, seen = v.metrics, v.seen
    res = ValResult(images=seen)
    res.speed_ms = speed_ms(dt, seen)
    nc = len(names)
    nt = m.nt_per_class if m.nt_per_class is not None else np.zeros(nc, int)
    res.instances = int(nt.sum())
    res.precision, res.recall, res.map50, res.map50_95 = (float(x) for x in m.mean_results())
    res.maps = [float(x) for x in m.maps][:nc] if len(m.ap_class_index) else [0.0] * nc
    for i, c in enumerate(m.ap_class_index):
        p, r, ap50, ap = m.class_result(i)
        res.per_class.append({"class": int(c), "name": names.get(int(c), str(c)), "images": int(m.nt_per_image[c]),
                              "instances": int(nt[c]), "p": float(p), "r": float(r), "map50": float(ap50),
                              "map50_95": float(ap)})
    return res
