# AGPL-3.0 License
"""Issue-27 behaviours of the runners: warnings a training gives about itself (sparsity dominating, mAP
collapsing), the image size rounded with one warning line in every entry point, seeded training, and class
names from --data for a model built from a yaml."""

from __future__ import annotations

import pytest
import torch

import val
from engine.predictor import image_shape
from engine.train_checks import MAP_DROP_SHARE, TrainingWatch
from engine.trainer import train
from utils.checkpoint import load_checkpoint

ROUNDED = "must be a multiple of max stride 32, updating to"
FAST = dict(imgsz=64, batch_size=8, workers=0, progress=False, hyp="scratch-low")


def test_val_rounds_imgsz_with_one_warning(shapes_yaml, tmp_path, capsys):
    rc = val.main(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "70", "--batch", "8",
                   "--workers", "0", "--no-progress", "--no-plots", "--project", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(f"--imgsz 70 {ROUNDED} 96") == 1, out


def test_detect_rounds_imgsz_with_one_warning(capsys):
    assert image_shape(300, 32) == [320, 320]
    assert image_shape([300, 640], 32) == [320, 640]
    out = capsys.readouterr().out
    assert out.count(f"--imgsz 300 {ROUNDED} 320") == 2, out  # once per call: h == w warns once
    assert image_shape(320, 32) == [320, 320] and ROUNDED not in capsys.readouterr().out


def test_map_collapse_warns_once(capsys):
    w = TrainingWatch()
    w.epoch(0, 0.2)
    w.epoch(1, 0.2 * MAP_DROP_SHARE + 0.01)
    assert not w.warnings
    w.epoch(2, 0.0)
    w.epoch(3, 0.0)
    assert len(w.warnings) == 1 and "mAP50-95 0.000 fell below 50%" in w.warnings[0]
    assert capsys.readouterr().out.count("WARNING: epoch 3: mAP50-95") == 1


def test_sparsity_dominating_warns_once_and_imgsz_rounds(shapes_yaml, tmp_path, capsys):
    res = train(cfg="yolov5n.yaml", data=str(shapes_yaml), epochs=2, sparsity=10, save_dir=str(tmp_path / "run"),
                **{**FAST, "imgsz": 70})
    out = capsys.readouterr().out
    assert out.count(f"--imgsz 70 {ROUNDED} 96") == 1, out
    assert out.count("WARNING: --sparsity 10: the sparsity term's gradient") == 1, out
    assert any(w.startswith("--sparsity 10") for w in res.warnings)
    assert "--sparsity 10" in (tmp_path / "run" / "warnings.txt").read_text()


def test_no_sparsity_warning_at_a_sane_setting(shapes_yaml, tmp_path):
    res = train(cfg="yolov5n.yaml", data=str(shapes_yaml), epochs=1, sparsity=1e-5, save_dir=str(tmp_path / "run"),
                **FAST)
    assert not [w for w in res.warnings if "--sparsity" in w]


def test_same_seed_same_weights_and_names_from_data(shapes_yaml, tmp_path):
    """Two trainings from scratch with workers (augmentation in worker processes) and the same --seed give
    bit-identical weights and metrics; the checkpoint of a yaml-built model has the data's class names."""
    runs = []
    for k in range(2):
        r = train(cfg="yolov5n.yaml", data=str(shapes_yaml), epochs=1, seed=3, save_dir=str(tmp_path / f"r{k}"),
                  **{**FAST, "workers": 2})
        ck = load_checkpoint(r.last)
        runs.append((ck["model"].state_dict(), r.metrics))
        assert ck["model"].names == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    (a, ma), (b, mb) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("precision", "recall", "map50", "map50_95", "epoch")
    assert [ma[k] for k in keys] == [mb[k] for k in keys]


@pytest.mark.parametrize("argv", [["--img", "300"]])
def test_val_cli_keeps_the_requested_size_until_the_model_is_known(argv):
    assert val.parse_opt(["--weights", "x.pt", *argv]).imgsz == 300
