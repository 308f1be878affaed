# AGPL-3.0 License
"""Validation conventions per family: YOLOv5/YOLOv7 models are scored as the official YOLOv5 val.py scores them
(engine.validation.common), ultralytics models as ultralytics' DetectionValidator (`yolo val`) scores them (this module).

The two differ where it matters for weak models: YOLOv5 closes the precision-recall curve with a line to (recall 1,
precision 0), ultralytics >= 8.3 ends it at the last recall -- on the YOLOv9t asset over a one-class COCO128 at 160
px the first gave mAP50 0.0816, `yolo val` 0.00456 --, and they resize with INTER_AREA vs INTER_LINEAR, rescale
boxes by the height gain vs per-axis gains, and default to NMS IoU 0.6 vs 0.7. The ultralytics convention here is
ultralytics' own code: its dataset resize, `DetectionValidator` preprocess, postprocess (NMS, or none for an
end-to-end head), box scaling, matching, `DetMetrics`, text and JSON writers; only the loop is ours, so compress.py,
train.py and val.py share it.

A broken model cannot stall validation, deterministically: ultralytics and YOLOv5 stop NMS of a batch after a
wall-clock limit (2.0 s + 0.05 s per image; YOLOv5 0.5 s + 0.05 s), which also cuts a healthy model's detections
on a busy machine (the official yolov5n on COCO128 at 320 lost mAP50-95 0.291 -> 0.226 that way here). Instead
an image is *saturated* when more than MAX_NMS box-class pairs (the official NMS cap) and more than 10% of all
pairs pass the confidence threshold -- a trained model passes well under 1% (official yolov5n at 640 on COCO128:
at most 9,873 of 1.7 M) while an untrained or broken one passes nearly all --, and after SATURATED_BUDGET such
images the next ones get no detections. The result then carries a note.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

NO_TIME_LIMIT = 1e9  # max_time_img for ultralytics' NMS: a reproducible metric must not depend on the machine's load
MAX_NMS = 30000  # candidate boxes NMS keeps per image (ultralytics and YOLOv5)
SATURATED_SHARE = 0.1  # share of all box-class pairs above conf that marks a broken model's image
SATURATED_BUDGET = 16  # saturated images given NMS (~1 s each on a CPU) before the next ones are skipped
CONVENTIONS = {
    "yolov5": "YOLOv5 val.py (INTER_AREA resize, height-gain rescale, NMS IoU 0.6, batch 32, PR curve closed to "
              "recall 1)",
    "ultralytics": "ultralytics DetectionValidator (INTER_LINEAR resize, per-axis rescale, NMS IoU 0.7, batch 16, PR "
                   "curve ends at the last recall)",
}
DEFAULT_IOU = {"yolov5": 0.6, "ultralytics": 0.7}
DEFAULT_BATCH = {"yolov5": 32, "ultralytics": 16}  # val.py / `yolo val` defaults: batch shapes of rect loaders


def validation_convention(model: nn.Module) -> str:
    """'yolov5' for YOLOv5/YOLOv7 models (anchor heads, models.yolo), 'ultralytics' for every ultralytics model."""
    from models.loader import model_family

    return "ultralytics" if model_family(model) == "ultralytics" else "yolov5"


def use_convention(loader, convention: str) -> None:
    """Make `loader` (data.datasets.build_val_loader) resize images the convention's way; a loader whose workers
    already hold the other setting is reset so that they pick it up (ultralytics' InfiniteDataLoader.reset)."""
    ds = getattr(loader, "dataset", None)
    if ds is None or not hasattr(ds, "convention") or ds.convention == convention:
        return
    ds.convention = convention
    if hasattr(loader, "reset"):
        loader.reset()


class SaturationGuard:
    """Deterministic bound on a broken model's NMS (see the module docstring): call it on each batch's raw
    predictions (batch, 4 + nc, anchors), scores from row 4, before NMS; it zeroes the scores of saturated images
    beyond the budget, in place. `note()` says what was skipped."""

    def __init__(self, conf_thres: float):
        self.conf, self.saturated, self.skipped = conf_thres, 0, 0

    def __call__(self, pred: torch.Tensor) -> None:
        if pred.dim() != 3 or pred.shape[1] <= 4:
            return
        scores = pred[:, 4:]
        n = (scores > self.conf).flatten(1).sum(1)
        for i in torch.nonzero((n > MAX_NMS) & (n > SATURATED_SHARE * scores[0].numel())).flatten().tolist():
            self.saturated += 1
            if self.saturated > SATURATED_BUDGET:
                scores[i] = 0
                self.skipped += 1

    def note(self) -> str | None:
        if not self.skipped:
            return None
        return (f"{self.saturated} images had more than {MAX_NMS} boxes above conf {self.conf} (over "
                f"{SATURATED_SHARE:.0%} of all box-class pairs: an untrained or broken model); after the first "
                f"{SATURATED_BUDGET}, {self.skipped} got no detections to keep validation short, so these metrics "
                "are a lower bound")


def select_head(model: nn.Module, end2end: bool | None) -> None:
    """Pick the inference head of an end-to-end model before fusing, as ultralytics' validator and predictor do:
    one-to-many + NMS unless end2end=True (ultralytics' `nms=False`). Warns when end2end is asked of a model
    without a one-to-one head (the flag would otherwise do nothing)."""
    from utils.general import LOGGER

    head = model.model[-1] if hasattr(model, "model") else None
    has_e2e = getattr(head, "one2one_cv2", None) is not None
    if end2end and not has_e2e:
        LOGGER.warning("--end2end: this model has no end-to-end (one-to-one) head; validating its only head with NMS")
    if has_e2e and hasattr(model, "end2end"):
        model.end2end = bool(end2end)


def eval_setup(model: nn.Module, device, half: bool, coco_ids: bool) -> tuple:
    """Both conventions' start: (torch.device, FP16 in use (CUDA only), model's former training flag, class id map
    for COCO json: COCO's 91 ids when coco_ids, else the class index); the model is put in eval (and half) mode."""
    device = torch.device(device)
    half = half and device.type == "cuda"
    was_training = model.training
    model.eval()
    if half:
        model.half()
    class_map = list(range(1000))
    if coco_ids:
        from ultralytics.data.converter import coco80_to_coco91_class

        class_map = coco80_to_coco91_class()
    return device, half, was_training, class_map


def _make_validator(model, loader, save_dir: Path, conf, iou, max_det, single_cls, half, save_conf, class_map):
    """An ultralytics DetectionValidator set up for a model object and a loader built elsewhere (no AutoBackend,
    no run folder of its own, no plots); save_dir only receives what the caller writes."""
    from ultralytics.models.yolo.detect import DetectionValidator

    v = DetectionValidator(save_dir=save_dir, args=dict(
        conf=conf, iou=iou, max_det=max_det, single_cls=single_cls, plots=False, save_json=False, save_txt=False,
        save_conf=save_conf, verbose=False, quantize=16 if half else None, task="detect"))
    v.dataloader, v.data, v.training = loader, {}, False  # standalone semantics (e.g. its max_det check)
    v.device = next(model.parameters()).device
    v.init_metrics(model)
    v.class_map = class_map
    return v


@torch.no_grad()
def validate_ultralytics(model: nn.Module, loader, names: dict[int, str], conf_thres: float = 0.001,
                         iou_thres: float | None = None, max_det: int = 300, single_cls: bool = False,
                         device: torch.device | str = "cpu", half: bool = False, save_dir: Path | None = None,
                         save_txt: bool = False, save_conf: bool = False, save_json: bool = False,
                         coco_ids: bool = False, progress: bool = True, plotter=None, criterion=None):
    """engine.validation.common.validate for ultralytics models, with ultralytics' DetectionValidator conventions.

    model: an ultralytics DetectionModel (fused or not; its `end2end` flag picks the head, see select_head);
    loader: data.datasets.build_val_loader (switched to ultralytics' resize here). Boxes are pixels of the original
    images. Returns (engine.validation.common.ValResult, COCO-json prediction rows); iou_thres None means 0.7.
    """
    from ultralytics.utils import TQDM

    from engine.validation.common import LossMeter, ValResult

    use_convention(loader, "ultralytics")
    device, half, was_training, class_map = eval_setup(model, device, half, coco_ids)
    tmp = None if save_dir is not None else tempfile.TemporaryDirectory()
    out_dir = Path(save_dir if save_dir is not None else tmp.name)
    v = _make_validator(model, loader, out_dir, conf_thres,
                        DEFAULT_IOU["ultralytics"] if iou_thres is None else iou_thres, max_det, single_cls, half,
                        save_conf, class_map)
    dt, guard, losses, stats = [0.0, 0.0, 0.0], SaturationGuard(conf_thres), LossMeter(criterion, device), []
    desc = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    try:
        for batch in TQDM(loader, desc=desc, total=len(loader), disable=not progress):
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
            if save_txt or save_json:
                _save(v, preds, batch, out_dir / "labels" if save_txt else None, save_json)
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
    res = _result(v, ValResult, names if not single_cls else {0: "item"}, dt)
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
    from ultralytics.utils.nms import non_max_suppression

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


def _result(v, result_cls, names: dict[int, str], dt: list[float]):
    """DetMetrics -> engine.validation.common.ValResult (same fields as the YOLOv5 convention's)."""
    m, seen = v.metrics, v.seen
    res = result_cls(images=seen)
    res.speed_ms = {k: 1e3 * t / max(seen, 1) for k, t in zip(("preprocess", "inference", "nms"), dt)}
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
