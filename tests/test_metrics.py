# AGPL-3.0 License
"""AP and matching follow YOLOv5's conventions exactly."""

from __future__ import annotations

import numpy as np
import torch

from engine.validation.ap import ap_per_class, average_precision
from engine.validation.common import match_predictions


def test_perfect_detector_scores_yolov5s_0995():
    # YOLOv5 closes the curve at (recall 1, precision 0) and samples 101 points: a perfect class reads 0.995
    assert abs(average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) - 0.995) < 1e-9


def test_half_recall_interpolates_linearly_to_recall_one():
    # precision 1 up to recall 0.5, then the straight line to (1, 0): 0.5 + 0.25 (ultralytics >= 8.3 gives 0.5)
    assert abs(average_precision(np.array([0.5]), np.array([1.0])) - 0.75) < 0.006


def test_no_true_positive_scores_zero():
    tp = np.zeros((3, 10), bool)
    p, r, ap, classes = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2))
    assert classes.tolist() == [0] and ap.max() == 0 and r[0] == 0


def test_precision_recall_at_best_f1():
    # one class, 4 labels; detections sorted by confidence: TP, TP, FP, TP, FP
    tp = np.array([1, 1, 0, 1, 0], bool)[:, None].repeat(10, 1)
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    p, r, ap, _ = ap_per_class(tp, conf, np.zeros(5), np.zeros(4))
    assert abs(r[0] - 0.75) < 0.02 and abs(p[0] - 0.75) < 0.05  # P interpolated on the conf axis
    # envelope: P=1 to R=.5, P=.75 to R=.75, then linear to (1, 0)
    assert 0.7 < ap[0, 0] < 0.85


def test_match_keeps_most_confident_prediction_per_label():
    # predictions arrive in confidence order; pred 0 (more confident) overlaps the label less than pred 1
    iou = torch.tensor([[0.7, 0.9]])  # (labels, preds)
    correct = match_predictions(torch.tensor([0.0, 0.0]), iou, torch.tensor([0.0]))
    assert correct[:, 0].tolist() == [True, False]  # YOLOv5: the label goes to the most confident match
    assert correct[:, 5].tolist() == [False, True]  # at IoU 0.75 only pred 1 qualifies
    assert not correct[:, 9].any()


def test_match_requires_same_class():
    correct = match_predictions(torch.tensor([1.0]), torch.tensor([[0.99]]), torch.tensor([0.0]))
    assert not correct.any()
