# AGPL-3.0 License
"""Model kinds the toolkit does not support end to end (ultralytics pose, OBB, classification, YOLO26's segmentation
head) are refused by every command line in one line, exit status 2, before any run folder or file is written —
from a model yaml and from an ultralytics checkpoint alike. Segmentation (Segment head) is supported: tests/test_seg*.py."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import compress
import detect
import export
import layer_selection
import train
import val

# ultralytics yaml -> (model class in ultralytics.nn.tasks, the words the refusal must use)
KINDS = {
    "yolo11n-pose.yaml": ("PoseModel", "pose"),
    "yolov8n-obb.yaml": ("OBBModel", "OBB"),
    "yolov8n-cls.yaml": ("ClassificationModel", "classification"),
}
CLIS = ("compress", "train", "val", "sensitivity", "detect", "export")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Each kind saved as ultralytics saves a finished model (`strip_optimizer`: 'model' holds the FP16 model)."""
    from ultralytics import __version__
    from ultralytics.nn import tasks

    folder = tmp_path_factory.mktemp("ultralytics_ckpts")
    out = {}
    for cfg, (cls, _) in KINDS.items():
        model = getattr(tasks, cls)(cfg, nc=4, verbose=False)
        model.args = {"imgsz": 64}  # ultralytics leaves its training arguments on the model
        ckpt = {"date": "", "version": __version__, "epoch": -1, "best_fitness": None,
                "model": copy.deepcopy(model).half(), "ema": None, "updates": None, "optimizer": None,
                "train_args": {"imgsz": 64}}
        path = folder / cfg.replace(".yaml", ".pt")
        torch.save(ckpt, path)
        out[cfg] = path
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "im.jpg"
    cv2.imwrite(str(path), np.full((64, 64, 3), 114, np.uint8))
    return path


def _argv(cli: str, weights: str, data: Path, project: Path, image: Path) -> tuple:
    common = ["--weights", weights, "--project", str(project)]
    small = ["--imgsz", "64", "--device", "cpu"]
    return {
        "compress": (compress, [*common, *small, "--data", str(data), "--epochs", "0", "--workers", "0",
                                "--no-latency"]),
        "train": (train, [*common, *small, "--data", str(data), "--epochs", "1", "--workers", "0", "--batch", "4"]),
        "val": (val, [*common, *small, "--data", str(data), "--workers", "0"]),
        "sensitivity": (val, [*common, *small, "--data", str(data), "--workers", "0", "--task", "sensitivity",
                              "--pruning-rate", "0.5"]),
        "detect": (detect, [*common, *small, "--source", str(image)]),
        "export": (export, [*common, "--imgsz", "64", "--include", "onnx"]),
    }[cli]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def _check_refused(cli, weights, words, shapes_yaml, image, tmp_path, capsys):
    module, argv = _argv(cli, str(weights), shapes_yaml, tmp_path / "runs", image)
    data_files = _files(shapes_yaml.parent)
    before = _files(Path(weights).parent) if Path(weights).is_file() else set()
    capsys.readouterr()
    rc = module.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err
    assert words in lines[0] and "not supported" in lines[0] and "detection" in lines[0] and "segmentation" in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists(), _files(tmp_path / "runs")  # no run folder, nothing in it
    assert _files(shapes_yaml.parent) == data_files  # nothing written beside the data
    if before:
        assert _files(Path(weights).parent) == before  # nothing exported or written beside the weights


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("cfg", list(KINDS))
def test_yaml_refused(cli, cfg, shapes_yaml, image, tmp_path, capsys):
    _check_refused(cli, cfg, KINDS[cfg][1], shapes_yaml, image, tmp_path, capsys)


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("cfg", list(KINDS))
def test_checkpoint_refused(cli, cfg, checkpoints, shapes_yaml, image, tmp_path, capsys):
    w = checkpoints[cfg]
    stamp = (w.stat().st_mtime_ns, w.read_bytes())
    _check_refused(cli, w, KINDS[cfg][1], shapes_yaml, image, tmp_path, capsys)
    assert (w.stat().st_mtime_ns, w.read_bytes()) == stamp  # the input weights are never modified


def test_pose26_and_obb26_refused(tmp_path):
    """YOLO26's own pose and OBB heads subclass the supported Detect: refused by the loader all the same."""
    from models.loader import load_model
    from utils.general import UsageError

    for cfg, words in (("yolo26n-pose.yaml", "pose"), ("yolo26n-obb.yaml", "OBB"), ("yolo26n-seg.yaml", "segment")):
        with pytest.raises(UsageError, match=words):
            load_model(cfg)


def test_detectors_still_load():
    """The supported heads, one per family, pass the check (it must not refuse what the toolkit supports)."""
    from models.loader import load_model

    for cfg, head in (("yolov5n.yaml", "Detect"), ("yolov7-tiny.yaml", "IDetect"), ("yolov8n.yaml", "Detect"),
                      ("yolov10n.yaml", "v10Detect"), ("yolo26n.yaml", "Detect"), ("yolov8n-seg.yaml", "Segment"),
                      ("yolo11n-seg.yaml", "Segment")):
        assert type(load_model(cfg, nc=4).model[-1]).__name__ == head, cfg


def test_layer_selection_reads_no_model(tmp_path, capsys):
    """layer_selection.py takes an analysis folder, never a model: the analysis (val.py --task sensitivity, tested
    above) is where a model is refused, so no folder exists for a refused kind and the selection says so."""
    rc = layer_selection.main(["--output", str(tmp_path / "runs" / "sensitivity" / "exp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ERROR: ")
    assert not (tmp_path / "runs").exists()
