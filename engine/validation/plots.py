# AGPL-3.0 License
"""val.py's plots: PR, P, R and F1 curves and confusion matrices, as YOLOv5 and ultralytics write them.

Fed only by what validation computes anyway, so it serves either AP convention:
  per image   the detections (xyxy pixels, conf, class) and the labels (xyxy pixels, class)
              -> ultralytics' ConfusionMatrix (conf 0.25, IoU 0.45, its defaults and YOLOv5's)
  at the end  the matching stats (tp, conf, pred_cls, target_cls) -> P/R/F1-confidence and PR curves
The curves are computed by ultralytics.utils.metrics.ap_per_class and drawn by its plot_pr_curve /
plot_mc_curve; the AP per class in the PR legend is the one the caller reports (val.py's table), so the
figure and the table agree whichever AP convention produced them. Matplotlib only: no font is fetched.
Every file is written atomically with the umask's mode (utils.files).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from utils.files import atomic_output, replace_file

CURVES = (("P_curve.png", "Precision"), ("R_curve.png", "Recall"), ("F1_curve.png", "F1"))


class ValPlots:
    """Collects one validation's detections and writes its plots with save()."""

    def __init__(self, names: dict[int, str], conf: float = 0.25, iou: float = 0.45):
        from ultralytics.utils.metrics import ConfusionMatrix

        self.names = {int(k): str(v) for k, v in names.items()}
        self.cm = ConfusionMatrix(names=self.names)
        self.conf, self.iou = conf, iou
        self.stats: list[tuple] = []
        self.error: Exception | None = None  # a matrix that could not be filled is reported by save(), not here

    def add_image(self, pred: torch.Tensor, labels_xyxy: torch.Tensor | None, labels_cls: torch.Tensor) -> None:
        """One image: pred (n, 6+) rows x1, y1, x2, y2 (pixels), conf, class; labels_xyxy (m, 4) pixels in the
        same space (None when there are no labels or no detections: matching needs no boxes then);
        labels_cls (m,)."""
        if self.error is not None:
            return
        pred = pred.detach().float().cpu()
        cls = labels_cls.detach().float().cpu()
        boxes = labels_xyxy.detach().float().cpu() if labels_xyxy is not None else torch.zeros((len(cls), 4))
        try:  # validation must not fail for a figure
            self.cm.process_batch({"bboxes": pred[:, :4], "conf": pred[:, 4], "cls": pred[:, 5]},
                                  {"bboxes": boxes, "cls": cls}, conf=self.conf, iou_thres=self.iou)
        except Exception as e:
            self.error = e

    def add_stats(self, stats: list[tuple]) -> None:
        """Per image (tp (n, 10) bool, conf (n,), pred_cls (n,), target_cls (m,)), as validation matched them."""
        self.stats = list(stats)

    def save(self, save_dir: str | Path, ap50: dict[int, float] | None = None) -> list[Path]:
        """Write PR_curve.png, P_curve.png, R_curve.png, F1_curve.png (when there are labels) and
        confusion_matrix.png, confusion_matrix_normalized.png into save_dir. ap50: class -> mAP50 to show in
        the PR legend (default: ultralytics' own AP). Returns the files written; raises RuntimeError (after
        writing the curves) when the confusion matrix could not be filled."""
        from ultralytics.utils.metrics import ap_per_class, plot_mc_curve, plot_pr_curve

        save_dir = Path(save_dir)
        written = []
        tp, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*self.stats)) if self.stats else \
            (np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
        if len(target_cls):
            *_, ap, classes, p_curve, r_curve, f1_curve, x, prec = ap_per_class(tp, conf, pred_cls, target_cls)
            if ap50 is not None:
                ap[:, 0] = [ap50.get(int(c), 0.0) for c in classes]
            names = {i: self.names.get(int(c), str(c)) for i, c in enumerate(classes)}
            with atomic_output(save_dir / "PR_curve.png") as f:
                plot_pr_curve(x, prec, ap, f, names)
            written.append(save_dir / "PR_curve.png")
            for fname, label in CURVES:
                y = {"Precision": p_curve, "Recall": r_curve, "F1": f1_curve}[label]
                with atomic_output(save_dir / fname) as f:
                    plot_mc_curve(x, y, f, names, ylabel=label)
                written.append(save_dir / fname)
        if self.error is not None:
            raise RuntimeError(f"confusion matrix: {type(self.error).__name__}: {self.error}")
        # ConfusionMatrix.plot names its own file: draw into a private folder, then rename into place
        with tempfile.TemporaryDirectory(dir=save_dir, prefix=".plots-") as tmp:
            for normalize in (False, True):
                self.cm.plot(normalize=normalize, save_dir=tmp)
            for f in sorted(Path(tmp).glob("*.png")):
                written.append(replace_file(f, save_dir / f.name))
        return written
