# AGPL-3.0 License
"""What both validation conventions share: the settings (ValSettings), the result (ValResult), the per-family
convention choice and its defaults, the loss meter, the output adapter and matcher, the saturation guard, and the
table / JSON writers. engine.validation.yolov5 and engine.validation.ultralytics hold the two loops;
engine.validation.validate dispatches between them.

Conventions: YOLOv5/YOLOv7 models are scored as the official YOLOv5 val.py scores them, ultralytics models as
ultralytics' DetectionValidator (`yolo val`) does. They differ where it matters for weak models: YOLOv5 closes the
precision-recall curve with a line to (recall 1, precision 0), ultralytics >= 8.3 ends it at the last recall; they
resize with INTER_AREA vs INTER_LINEAR, rescale boxes by the height gain vs per-axis gains, and default to NMS IoU
0.6 vs 0.7 (docs/benchmarks/validation.md compares them).

A broken model cannot stall validation, deterministically: ultralytics and YOLOv5 stop NMS of a batch after a
wall-clock limit, which also cuts a healthy model's detections on a busy machine. Instead an image is *saturated*
when more than MAX_NMS box-class pairs (the official NMS cap) and more than SATURATED_SHARE of all pairs pass the
confidence threshold -- a trained model passes a small fraction, an untrained or broken one nearly all --, and
after SATURATED_BUDGET such images the next ones get no detections. The result then carries a note.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn as nn
from ultralytics.data.converter import coco80_to_coco91_class

from models.loader import is_anchor_based, model_family
from utils import files
from utils.general import LOGGER, UsageError

Convention = Literal["yolov5", "ultralytics"]
CONVENTION_NAMES: tuple[str, ...] = get_args(Convention)
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
TABLE_HEADER = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"

NO_TIME_LIMIT = 1e9  # max_time_img for ultralytics' NMS: a reproducible metric must not depend on the machine's load
MAX_NMS = 30000  # candidate boxes NMS keeps per image (ultralytics and YOLOv5)
SATURATED_SHARE = 0.1  # share of all box-class pairs above conf that marks a broken model's image
SATURATED_BUDGET = 16  # saturated images given NMS (each slow on a CPU) before the next ones are skipped
CONVENTIONS = {
    "yolov5": "YOLOv5 val.py (INTER_AREA resize, height-gain rescale, NMS IoU 0.6, batch 32, PR curve closed to "
              "recall 1)",
    "ultralytics": "ultralytics DetectionValidator (INTER_LINEAR resize, per-axis rescale, NMS IoU 0.7, batch 16, PR "
                   "curve ends at the last recall)",
}
DEFAULT_IOU = {"yolov5": 0.6, "ultralytics": 0.7}
DEFAULT_BATCH = {"yolov5": 32, "ultralytics": 16}  # val.py / `yolo val` defaults: batch shapes of rect loaders





@dataclass(frozen=True)
class ValSettings:
    """How one validation runs (YOLOv5 val.py's flags). iou_thres None: the convention's default (DEFAULT_IOU).

    Raises:
        UsageError: a threshold outside [0, 1] or max_det < 1.
    """

    conf_thres: float = 0.001
    iou_thres: float | None = None
    max_det: int = 300
    single_cls: bool = False
    half: bool = False  # FP16 inference, CUDA only
    save_txt: bool = False  # YOLO-format labels under save_dir/labels
    save_conf: bool = False  # confidences in those labels
    save_json: bool = False  # COCO-json prediction rows returned beside the result
    coco_ids: bool = False  # COCO's 91 category ids in the json (else the class index)
    progress: bool = True

    def __post_init__(self):
        if not 0 <= self.conf_thres <= 1 or not 0 <= (0.5 if self.iou_thres is None else self.iou_thres) <= 1:
            raise UsageError("--conf-thres and --iou-thres must be in [0, 1]")
        if self.max_det < 1:
            raise UsageError(f"--max-det must be >= 1, got {self.max_det}")

    def iou(self, convention: Convention) -> float:
        """The NMS IoU threshold in use under `convention`."""
        return DEFAULT_IOU[convention] if self.iou_thres is None else self.iou_thres

    @classmethod
    def of(cls, settings: ValSettings | None = None, **kw) -> ValSettings:
        """`settings` (or the defaults) with the keyword fields replaced; unknown keywords raise TypeError."""
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown validation setting(s): {', '.join(sorted(unknown))}")
        return replace(settings or cls(), **kw)

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
    convention: str = "yolov5"  # whose validator the numbers reproduce (CONVENTIONS)
    notes: list = field(default_factory=list)  # caveats, e.g. the NMS time limit was hit
    losses: dict = field(default_factory=dict)  # validation loss per task (mean over batches) when a criterion is given
    tasks: dict = field(default_factory=dict)  # metrics of another task's output, e.g. {'mask': {precision, ...}}

    @property
    def fitness(self) -> float:
        """0.1 mAP50 + 0.9 mAP50-95 of the boxes, plus the same of every other output (as ultralytics' metrics)."""
        parts = [(self.map50, self.map50_95), *((t["map50"], t["map50_95"]) for t in self.tasks.values())]
        return sum(0.1 * a + 0.9 * b for a, b in parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fitness"] = self.fitness
        return d


def validation_convention(model: nn.Module) -> Convention:
    """'yolov5' for YOLOv5/YOLOv7 models (anchor heads, models.yolo), 'ultralytics' for every ultralytics model."""
    return "ultralytics" if model_family(model) == "ultralytics" else "yolov5"


def use_convention(loader, convention: Convention) -> None:
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
    class_map = coco80_to_coco91_class() if coco_ids else list(range(1000))
    return device, half, was_training, class_map


def to_nms_format(out, model: nn.Module) -> torch.Tensor:
    """Model eval output -> (bs, 4 + nc, N): xywh pixels then class scores.

    Anchor-based heads give (bs, N, 5 + nc) with objectness; the class score is obj·cls as in YOLOv5's NMS
    (obj·cls > conf implies obj > conf, so YOLOv5's extra objectness pre-filter changes nothing).
    """
    pred = out[0] if isinstance(out, (list, tuple)) else out
    if isinstance(pred, (list, tuple)):  # a segmentation head: (predictions with mask coefficients, mask protos)
        pred = pred[0]
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


def coco_image_id(path: str) -> int | str:
    """COCO image id of an image file: its stem as an int when numeric (COCO's 000000000139.jpg), else the stem."""
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


def format_table(res: ValResult, verbose: bool = False) -> str:
    """YOLOv5's metrics table: the 'all' row, then (verbose) one row per class."""
    header = TABLE_HEADER
    row = "%22s%11i%11i%11.3g%11.3g%11.3g%11.3g"
    lines = [header, row % ("all" if not res.tasks else "all (box)", res.images, res.instances, res.precision,
                            res.recall, res.map50, res.map50_95)]
    for task, t in res.tasks.items():  # e.g. a segmentation model's masks
        lines.append(row % (f"all ({task})", res.images, res.instances, t["precision"], t["recall"], t["map50"],
                            t["map50_95"]))
    if res.instances == 0:
        lines.append("WARNING: no labels found in the evaluated split, can not compute metrics without labels")
    if verbose:
        for c in res.per_class:
            lines.append(row % (c["name"], c["images"], c["instances"], c["p"], c["r"], c["map50"], c["map50_95"]))
    return "\n".join(lines)


def write_json(obj, path: Path) -> Path:
    """Atomic JSON write (temporary file, then rename; see utils.files)."""
    return files.write_json(obj, path)


def speed_ms(dt: list[float], seen: int) -> dict:
    """Per-image milliseconds of the three timed stages from their summed seconds `dt`."""
    return {k: 1e3 * t / max(seen, 1) for k, t in zip(("preprocess", "inference", "nms"), dt)}
