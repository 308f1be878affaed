# AGPL-3.0 License
"""The YOLOv5 convention's loop (YOLOv5/YOLOv7 models): the official YOLOv5 val.py's pipeline.

Rectangular letterboxed batches, NMS at conf 0.001 / IoU 0.6 with multiple labels per box, predictions and labels
compared in native image space at IoU 0.50:0.95, AP by 101-point interpolation (engine.validation.ap), P and R at
the max mean-F1 confidence. Ultralytics supplies the dataset, NMS and box helpers; this module the glue.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision  # noqa: F401  ultralytics uses torchvision's NMS only if already imported (else a slow one)
from ultralytics.utils import TQDM
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes, xywh2xyxy, xyxy2xywh

from engine.validation.ap import ap_per_class
from engine.validation.common import (
    IOU_THRESHOLDS,
    NO_TIME_LIMIT,
    TABLE_HEADER,
    LossMeter,
    SaturationGuard,
    ValResult,
    ValSettings,
    coco_image_id,
    eval_setup,
    match_predictions,
    speed_ms,
    to_nms_format,
    use_convention,
)

@torch.no_grad()
def validate_yolov5(model: nn.Module, loader, names: dict[int, str], settings: ValSettings,
                    device: torch.device | str = "cpu", save_dir: Path | None = None, plotter=None,
                    criterion=None) -> tuple[ValResult, list[dict]]:
    """Score `model` over `loader` with the YOLOv5 convention.

    Args:
        model: a YOLOv5/YOLOv7 model (fused or not).
        loader: data.datasets.build_val_loader (switched to YOLOv5's resize here).
        names: class index -> name.
        settings: thresholds and outputs (ValSettings).
        device: where the model runs; save_dir: receives labels/ with settings.save_txt.
        plotter: engine.validation.plots.ValPlots or None; criterion: models.loss.build_criterion or None.
    Returns:
        (ValResult, COCO-json prediction rows; empty unless settings.save_json).
    """
    s = settings
    use_convention(loader, "yolov5")
    device, half, was_training, class_map = eval_setup(model, device, s.half, s.coco_ids)
    stats, jdict, seen = [], [], 0
    losses = LossMeter(criterion, device)
    dt, guard = [0.0, 0.0, 0.0], SaturationGuard(s.conf_thres)
    for batch in TQDM(loader, desc=TABLE_HEADER, total=len(loader), disable=not s.progress):
        t0 = time.perf_counter()
        im = batch["img"].to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        t1 = time.perf_counter()
        out = model(im)
        t2 = time.perf_counter()
        losses.add(out, batch)
        pred = to_nms_format(out, model).float()
        guard(pred)  # a broken model's saturated images cannot stall validation (deterministically)
        preds = non_max_suppression(
            pred, s.conf_thres, s.iou("yolov5"), multi_label=True, agnostic=s.single_cls, max_det=s.max_det,
            nc=len(names) if not s.single_cls else 0,
            max_time_img=NO_TIME_LIMIT,  # YOLOv5/ultralytics abort slow NMS; a reproducible metric must not
        )
        dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, time.perf_counter() - t2))]
        for si, pred in enumerate(preds):
            seen += 1
            row = _score_image(pred, batch, si, im, s, device, plotter)
            if row is None:
                continue
            stats.append(row[0])
            predn = row[1]
            if predn is None:
                continue
            if s.save_txt and save_dir is not None:
                save_txt(predn, s.save_conf, batch["ori_shape"][si],
                         save_dir / "labels" / f"{Path(batch['im_file'][si]).stem}.txt")
            if s.save_json:
                jdict += json_rows(predn, coco_image_id(batch["im_file"][si]), class_map)
    if was_training:
        model.train()
    if half:
        model.float()
    if plotter is not None:
        plotter.add_stats(stats)
    res = summarize(stats, names if not s.single_cls else {0: "item"}, 1 if s.single_cls else len(names), seen, dt)
    res.losses = losses.mean()
    if guard.note():
        res.notes.append(guard.note())
    return res, jdict


def _score_image(pred: torch.Tensor, batch: dict, si: int, im: torch.Tensor, s: ValSettings, device, plotter):
    """One image's matching stats (correct (n, 10), conf, pred_cls, target_cls) and its detections in native
    pixels (None without detections); None when the image has neither detections nor labels."""
    height, width = im.shape[2:]
    idx = batch["batch_idx"] == si
    cls = batch["cls"][idx].squeeze(-1).to(device)
    bbox = batch["bboxes"][idx].to(device)
    shape0, (gains, pad) = batch["ori_shape"][si], batch["ratio_pad"][si]
    ratio_pad = ((gains[0], gains[0]), pad)  # YOLOv5 rescales both axes by the height gain
    if s.single_cls:
        pred[:, 5] = 0
    npr = pred.shape[0]
    if npr == 0:
        if plotter is not None:
            plotter.add_image(pred, None, cls)
        if len(cls):
            return (np.zeros((0, len(IOU_THRESHOLDS)), bool), np.zeros(0), np.zeros(0), cls.cpu().numpy()), None
        return None
    predn = pred.clone()
    scale_boxes(im[si].shape[1:], predn[:, :4], shape0, ratio_pad=ratio_pad)
    tbox = None
    if len(cls):
        tbox = xywh2xyxy(bbox * torch.tensor((width, height, width, height), device=device))
        scale_boxes(im[si].shape[1:], tbox, shape0, ratio_pad=ratio_pad)
        correct = match_predictions(predn[:, 5], box_iou(tbox, predn[:, :4]), cls)
    else:
        correct = np.zeros((npr, len(IOU_THRESHOLDS)), bool)
    if plotter is not None:
        plotter.add_image(predn, tbox, cls)
    return (correct, pred[:, 4].cpu().numpy(), pred[:, 5].cpu().numpy(), cls.cpu().numpy()), predn


def json_rows(predn: torch.Tensor, image_id, class_map: list[int]) -> list[dict]:
    """COCO-json rows (xywh top-left box, rounded as YOLOv5 writes them) of one image's detections."""
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2
    return [{"image_id": image_id, "category_id": class_map[int(p[5])], "bbox": [round(x, 3) for x in b],
             "score": round(p[4], 5)} for p, b in zip(predn.tolist(), box.tolist())]


def save_txt(predn: torch.Tensor, save_conf: bool, shape0, file: Path) -> None:
    """Append one image's detections to `file` as YOLO labels normalised to the original image (h, w) shape0."""
    file.parent.mkdir(parents=True, exist_ok=True)
    gn = torch.tensor(shape0, dtype=torch.float32)[[1, 0, 1, 0]]
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn[:, :6].cpu().tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def summarize(stats: list[tuple], names: dict[int, str], nc: int, seen: int, dt: list[float]) -> ValResult:
    """Matching stats of every image -> ValResult (P, R at the max mean-F1 confidence; AP per class)."""
    res = ValResult(images=seen)
    res.speed_ms = speed_ms(dt, seen)
    if not stats:
        res.maps = [0.0] * nc
        return res
    correct, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    nt = np.bincount(target_cls.astype(int), minlength=nc)
    res.instances = int(nt.sum())
    maps = np.zeros(nc)
    if len(correct) and correct.any():
        p, r, ap, ap_class = ap_per_class(correct, conf, pred_cls, target_cls)
        ap50, ap = ap[:, 0], ap.mean(1)
        res.precision, res.recall, res.map50, res.map50_95 = map(float, (p.mean(), r.mean(), ap50.mean(), ap.mean()))
        maps += res.map50_95
        img_count = images_per_class(stats, nc)
        for i, c in enumerate(ap_class):
            maps[c] = ap[i]
            res.per_class.append({"class": int(c), "name": names.get(int(c), str(c)), "images": int(img_count[c]),
                                  "instances": int(nt[c]), "p": float(p[i]), "r": float(r[i]),
                                  "map50": float(ap50[i]), "map50_95": float(ap[i])})
    res.maps = maps.tolist()
    return res


def images_per_class(stats: list[tuple], nc: int) -> np.ndarray:
    """Number of images holding at least one label of each class, (nc,)."""
    counts = np.zeros(nc, int)
    for s in stats:
        for c in np.unique(s[3].astype(int)):
            counts[c] += 1
    return counts
