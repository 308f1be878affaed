# AGPL-3.0 License
"""Detection AP with the official YOLOv5 conventions.

Own implementation rather than ultralytics' because ultralytics >= 8.3 closes the PR curve with a
vertical drop at the last recall, while YOLOv5 interpolates linearly to (recall 1, precision 0);
that alone moves mAP50 measurably (docs/benchmarks/validation.md) and the task is to reproduce YOLOv5.
"""

from __future__ import annotations

import numpy as np

_AP_X = np.linspace(0, 1, 101)  # COCO's 101 recall points
_CURVE_X = np.linspace(0, 1, 1000)  # confidence axis for P/R/F1 curves
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone (right-max) precision envelope, sampled at 101 recall points."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    return float(_trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


def _smooth(y: np.ndarray, f: float = 0.1) -> np.ndarray:
    nf = round(len(y) * f * 2) // 2 + 1  # odd box-filter width
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16):
    """Per-class P, R (at the confidence maximizing mean F1) and AP at each IoU column of tp.

    tp: (n_pred, n_iou) bool; conf, pred_cls: (n_pred,); target_cls: (n_labels,).
    Returns p (k,), r (k,), ap (k, n_iou), classes (k,) for the k classes that have labels.
    """
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    k = len(classes)
    ap = np.zeros((k, tp.shape[1]))
    p_curve, r_curve = np.zeros((k, len(_CURVE_X))), np.zeros((k, len(_CURVE_X)))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_labels[ci] + eps)
        precision = tpc / (tpc + fpc)
        # conf decreases along the arrays, so interpolate on negated axes
        r_curve[ci] = np.interp(-_CURVE_X, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-_CURVE_X, -conf[sel], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j] = average_precision(recall[:, j], precision[:, j])
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = _smooth(f1.mean(0), 0.1).argmax() if k else 0
    return p_curve[:, i], r_curve[:, i], ap, classes.astype(int)
