# AGPL-3.0 License
"""Detection validation for every family: YOLOv5/YOLOv7 models reproduce the official YOLOv5 val.py (here),
ultralytics models ultralytics' DetectionValidator (engine.validation.ultralytics, dispatched from validate()).

Same pipeline as YOLOv5: rectangular letterboxed batches, NMS at conf 0.001 / IoU 0.6 with multiple
labels per box, predictions and labels compared in native image space at IoU 0.50:0.95, AP by
101-point interpolation, P and R at the max mean-F1 confidence. Ultralytics supplies the dataset,
NMS and AP code; this module supplies the glue and the per-family output adapter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision  # noqa: F401  ultralytics uses torchvision's NMS only if already imported (fallback ~100x slower)

from engine.validation.ap import ap_per_class
from models.loader import is_anchor_based

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


@dataclass
class ValResult:
    precision: float = 0.0
    recall: float = 0.0
    map50: float = 0.0
    map50_95: float = 0.0
    images: int = 0
    instances: int = 0
    speed_ms: dict = field(default_factory=dict)  # per image: pre-process, inference, NMS
    per_class: list = field(default_factory=list)  # [{class, name, images, instances, p, r, map50, map50_95}]
    maps: list = field(default_factory=list)  # mAP50-95 per class index (overall mAP where a class is absent)
    coco: dict = field(default_factory=dict)  # pycocotools results when --save-json evaluation ran
    convention: str = "yolov5"  # whose validator the numbers reproduce (engine.validation.ultralytics.CONVENTIONS)
    notes: list = field(default_factory=list)  # caveats, e.g. the NMS time limit was hit
    losses: dict = field(default_factory=dict)  # validation loss per task (mean over batches) when a criterion is given

    @property
    def fitness(self) -> float:
        return 0.1 * self.map50 + 0.9 * self.map50_95

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fitness"] = self.fitness
        return d


def to_nms_format(out, model: nn.Module) -> torch.Tensor:
    """Model eval output -> (bs, 4 + nc, N): xywh pixels then class scores.

    Anchor-based heads give (bs, N, 5 + nc) with objectness; the class score is obj·cls as in YOLOv5's NMS
    (obj·cls > conf implies obj > conf, so YOLOv5's extra objectness pre-filter changes nothing).
    """
    pred = out[0] if isinstance(out, (list, tuple)) else out
    if is_anchor_based(model):
        return torch.cat((pred[..., :4], pred[..., 5:] * pred[..., 4:5]), -1).transpose(1, 2)
    return pred


def match_predictions(pred_cls: torch.Tensor, pred_iou: torch.Tensor, true_cls: torch.Tensor) -> np.ndarray:
    """Greedy one-to-one matching per IoU threshold, highest IoU first (YOLOv5 process_batch).

    pred_iou is (n_labels, n_preds). Returns a bool (n_preds, 10) 'correct' matrix.
    """
    correct = np.zeros((pred_cls.shape[0], len(IOU_THRESHOLDS)), dtype=bool)
    same_class = (true_cls[:, None] == pred_cls[None, :]).cpu()
    iou = (pred_iou.cpu() * same_class).numpy()
    for k, t in enumerate(IOU_THRESHOLDS.tolist()):
        li, pi = np.nonzero(iou >= t)
        if not len(li):
            continue
        order = iou[li, pi].argsort()[::-1]
        li, pi = li[order], pi[order]
        _, first = np.unique(pi, return_index=True)  # each prediction keeps its best label
        li, pi = li[first], pi[first]  # now ordered by prediction index, i.e. by confidence
        _, first = np.unique(li, return_index=True)  # each label keeps its most confident prediction
        correct[pi[first], k] = True
    return correct


def _coco_image_id(path: str):
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


class LossMeter:
    """Mean per-task validation loss over batches, from the raw head outputs a model returns beside its
    detections in eval mode ((detections, raw) tuples); nothing when there is no criterion or no raw output."""

    def __init__(self, criterion, device):
        self.criterion, self.device, self.sum, self.batches = criterion, device, None, 0

    def add(self, out, batch: dict) -> None:
        if self.criterion is None or not isinstance(out, (list, tuple)) or len(out) < 2 or not len(out[1]):
            return
        raw = [x.float() for x in out[1]] if isinstance(out[1], (list, tuple)) else out[1]
        items = self.criterion(raw, {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()})[1]
        items = items.detach().float().cpu()
        self.sum = items if self.sum is None else self.sum + items
        self.batches += 1

    def mean(self) -> dict:
        return {} if self.sum is None else {n: float(v) / self.batches for n, v in zip(self.criterion.names, self.sum)}


@torch.no_grad()
def validate(
    model: nn.Module,
    loader,
    names: dict[int, str],
    conf_thres: float = 0.001,
    iou_thres: float | None = None,
    max_det: int = 300,
    single_cls: bool = False,
    device: torch.device | str = "cpu",
    half: bool = False,
    save_dir: Path | None = None,
    save_txt: bool = False,
    save_conf: bool = False,
    save_json: bool = False,
    coco_ids: bool = False,
    progress: bool = True,
    plotter=None,
    criterion=None,
) -> tuple[ValResult, list[dict]]:
    """Run the model over `loader` and compute detection metrics. Returns (result, json predictions).

    The model's family picks the convention (engine.validation.ultralytics); iou_thres None is the convention's default
    (YOLOv5 0.6, ultralytics 0.7).
    `plotter` (engine.validation.plots.ValPlots) receives each image's detections and labels and the matching stats.
    `criterion` (models.loss.build_criterion of the same model): also the per-task validation losses, from the raw
    head outputs the model returns beside its detections in eval mode (as YOLOv5's val.py computes them during
    training); left out when the head returns none (e.g. a fused end-to-end head)."""
    from engine.validation import ultralytics as uv

    if uv.validation_convention(model) == "ultralytics":
        return uv.validate_ultralytics(model, loader, names, conf_thres, iou_thres, max_det, single_cls, device, half,
                                       save_dir, save_txt, save_conf, save_json, coco_ids, progress, plotter=plotter,
                                       criterion=criterion)
    uv.use_convention(loader, "yolov5")
    iou_thres = uv.DEFAULT_IOU["yolov5"] if iou_thres is None else iou_thres
    from ultralytics.utils import TQDM
    from ultralytics.utils.metrics import box_iou
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes, xywh2xyxy, xyxy2xywh

    device, half, was_training, class_map = uv.eval_setup(model, device, half, coco_ids)
    nc = 1 if single_cls else len(names)
    iouv = IOU_THRESHOLDS.to(device)
    stats, jdict, seen = [], [], 0
    losses = LossMeter(criterion, device)
    dt, guard = [0.0, 0.0, 0.0], uv.SaturationGuard(conf_thres)
    desc = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    pbar = TQDM(loader, desc=desc, total=len(loader), disable=not progress)
    for batch in pbar:
        t0 = time.perf_counter()
        im = batch["img"].to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        nb, _, height, width = im.shape
        t1 = time.perf_counter()
        out = model(im)
        t2 = time.perf_counter()
        losses.add(out, batch)
        pred = to_nms_format(out, model).float()
        guard(pred)  # a broken model's saturated images cannot stall validation (deterministically)
        preds = non_max_suppression(
            pred,
            conf_thres,
            iou_thres,
            multi_label=True,
            agnostic=single_cls,
            max_det=max_det,
            nc=len(names) if not single_cls else 0,
            max_time_img=uv.NO_TIME_LIMIT,  # YOLOv5/ultralytics abort slow NMS; a reproducible metric must not
        )
        t3 = time.perf_counter()
        dt[0] += t1 - t0
        dt[1] += t2 - t1
        dt[2] += t3 - t2

        for si, pred in enumerate(preds):
            idx = batch["batch_idx"] == si
            cls = batch["cls"][idx].squeeze(-1).to(device)
            bbox = batch["bboxes"][idx].to(device)
            shape0, (gains, pad) = batch["ori_shape"][si], batch["ratio_pad"][si]
            ratio_pad = ((gains[0], gains[0]), pad)  # YOLOv5 rescales both axes by the height gain
            seen += 1
            if single_cls:
                pred[:, 5] = 0
            npr = pred.shape[0]
            if npr == 0:
                if len(cls):
                    stats.append((np.zeros((0, len(iouv)), bool), np.zeros(0), np.zeros(0), cls.cpu().numpy()))
                if plotter is not None:
                    plotter.add_image(pred, None, cls)
                continue
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape0, ratio_pad=ratio_pad)
            if len(cls):
                tbox = xywh2xyxy(bbox * torch.tensor((width, height, width, height), device=device))
                scale_boxes(im[si].shape[1:], tbox, shape0, ratio_pad=ratio_pad)
                correct = match_predictions(predn[:, 5], box_iou(tbox, predn[:, :4]), cls)
            else:
                correct = np.zeros((npr, len(iouv)), bool)
            stats.append((correct, pred[:, 4].cpu().numpy(), pred[:, 5].cpu().numpy(), cls.cpu().numpy()))
            if plotter is not None:
                plotter.add_image(predn, tbox if len(cls) else None, cls)

            if save_txt and save_dir is not None:
                _save_txt(predn, save_conf, shape0, save_dir / "labels" / f"{Path(batch['im_file'][si]).stem}.txt")
            if save_json:
                box = xyxy2xywh(predn[:, :4])
                box[:, :2] -= box[:, 2:] / 2
                image_id = _coco_image_id(batch["im_file"][si])
                for p, b in zip(predn.tolist(), box.tolist()):
                    jdict.append(
                        {
                            "image_id": image_id,
                            "category_id": class_map[int(p[5])],
                            "bbox": [round(x, 3) for x in b],
                            "score": round(p[4], 5),
                        }
                    )

    if was_training:
        model.train()
    if half:
        model.float()
    if plotter is not None:
        plotter.add_stats(stats)
    res = _summarize(stats, names if not single_cls else {0: "item"}, nc, seen, dt)
    res.losses = losses.mean()
    if guard.note():
        res.notes.append(guard.note())
    return res, jdict


def _save_txt(predn: torch.Tensor, save_conf: bool, shape0, file: Path) -> None:
    from ultralytics.utils.ops import xyxy2xywh

    file.parent.mkdir(parents=True, exist_ok=True)
    gn = torch.tensor(shape0, dtype=torch.float32)[[1, 0, 1, 0]]
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn[:, :6].cpu().tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def _summarize(stats, names, nc, seen, dt) -> ValResult:
    res = ValResult(images=seen)
    res.speed_ms = {k: 1e3 * t / max(seen, 1) for k, t in zip(("preprocess", "inference", "nms"), dt)}
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
        img_count = _images_per_class(stats, nc)
        for i, c in enumerate(ap_class):
            maps[c] = ap[i]
            res.per_class.append(
                {
                    "class": int(c),
                    "name": names.get(int(c), str(c)),
                    "images": int(img_count[c]),
                    "instances": int(nt[c]),
                    "p": float(p[i]),
                    "r": float(r[i]),
                    "map50": float(ap50[i]),
                    "map50_95": float(ap[i]),
                }
            )
    res.maps = maps.tolist()
    return res


def _images_per_class(stats, nc) -> np.ndarray:
    counts = np.zeros(nc, int)
    for s in stats:
        for c in np.unique(s[3].astype(int)):
            counts[c] += 1
    return counts


def format_table(res: ValResult, verbose: bool = False) -> str:
    header = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    row = "%22s%11i%11i%11.3g%11.3g%11.3g%11.3g"
    lines = [header, row % ("all", res.images, res.instances, res.precision, res.recall, res.map50, res.map50_95)]
    if res.instances == 0:
        lines.append("WARNING: no labels found in the evaluated split, can not compute metrics without labels")
    if verbose:
        for c in res.per_class:
            lines.append(row % (c["name"], c["images"], c["instances"], c["p"], c["r"], c["map50"], c["map50_95"]))
    return "\n".join(lines)


def coco_evaluate(pred_json: Path, anno_json: Path, image_ids: list) -> dict:
    """pycocotools evaluation of a predictions json; returns {'coco_map50_95', 'coco_map50'}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anno = COCO(str(anno_json))
    pred = anno.loadRes(str(pred_json))
    ev = COCOeval(anno, pred, "bbox")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"coco_map50_95": float(ev.stats[0]), "coco_map50": float(ev.stats[1])}


def write_json(obj, path: Path) -> Path:
    """Atomic JSON write (temporary file, then rename; see utils.files)."""
    from utils import files

    return files.write_json(obj, path)
