# AGPL-3.0 License
"""val.py's plots: PR/P/R/F1 curves and confusion matrices (--plots by default, --no-plots), offline, atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import val

PLOTS = ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png",
         "confusion_matrix_normalized.png"]


def test_val_writes_plots_offline(shapes_yaml, tmp_path, network_attempts):
    argv = ["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--workers", "0",
            "--project", str(tmp_path), "--no-progress"]
    assert val.main([*argv, "--name", "p"]) == 0
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == sorted([*PLOTS, "metrics.json"])  # no temporary file or folder left behind
    assert all((tmp_path / "p" / f).read_bytes()[:4] == b"\x89PNG" for f in PLOTS)
    assert network_attempts == []
    assert val.main([*argv, "--name", "n", "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["metrics.json"]


def test_confusion_matrix_and_curves_from_the_validation_stats(tmp_path):
    """One image: a right detection, a wrong-class one, a background false positive and a missed label."""
    from engine.validation.plots import ValPlots

    vp = ValPlots({0: "a", 1: "b"})
    labels = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]])
    cls = torch.tensor([0, 0, 1.0])
    pred = torch.tensor([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [60, 60, 70, 70, 0.7, 1],
                         [40, 40, 50, 50, 0.1, 1]])  # the last one is under the matrix's 0.25 confidence
    vp.add_image(pred, labels, cls)
    vp.add_image(torch.zeros((0, 6)), None, torch.tensor([1.0]))  # an image without detections: one more miss
    m = vp.cm.matrix  # [predicted, true], background last
    assert m[0, 0] == 1 and m[1, 0] == 1 and m[1, 2] == 1 and m[2, 1] == 2 and m.sum() == 5
    tp = np.array([[1] * 10, [0] * 10, [0] * 10, [1] * 10], bool)
    vp.add_stats([(tp, pred[:, 4].numpy(), pred[:, 5].numpy(), cls.numpy()), (np.zeros((0, 10), bool), np.zeros(0),
                                                                               np.zeros(0), np.array([1.0]))])
    written = vp.save(tmp_path, ap50={0: 0.5, 1: 0.25})
    assert sorted(p.name for p in written) == sorted(PLOTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PLOTS)


@pytest.mark.parametrize("single_cls", [False, True])
def test_plots_with_no_labels_or_single_class(single_cls, tmp_path):
    from engine.validation.plots import ValPlots

    vp = ValPlots({0: "item"} if single_cls else {0: "a", 1: "b"})
    vp.add_image(torch.tensor([[0, 0, 10, 10, 0.9, 0]]), None, torch.zeros(0))  # a detection, no label anywhere
    vp.add_stats([])
    names = sorted(p.name for p in vp.save(tmp_path))
    assert names == ["confusion_matrix.png", "confusion_matrix_normalized.png"]  # no curve without labels


def test_a_plotting_failure_never_costs_the_metrics(shapes_yaml, tmp_path, monkeypatch, capsys):
    from ultralytics.utils.metrics import ConfusionMatrix

    def broken(*a, **k):
        raise TypeError("another ultralytics API")

    monkeypatch.setattr(ConfusionMatrix, "process_batch", broken)
    assert val.main(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--workers", "0",
                     "--project", str(tmp_path), "--name", "p", "--no-progress"]) == 0
    assert "WARNING: plots not written (RuntimeError: confusion matrix: TypeError" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted([*PLOTS[:4], "metrics.json"])
