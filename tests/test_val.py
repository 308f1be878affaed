# AGPL-3.0 License
"""val.py end to end: built-in dataset, real assets (official numbers), clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, YOLOV5N_PT, need

import val

METRIC_KEYS = {"precision", "recall", "map50", "map50_95", "params", "gflops", "images", "instances", "speed_ms"}


def test_val_on_builtin_dataset(shapes_yaml, tmp_path):
    res, save_dir = val.run(
        weights="yolov5n.yaml", data=str(shapes_yaml), imgsz=128, batch_size=4, workers=0,
        project=str(tmp_path), name="exp", no_progress=True, model=_tiny_model(4),
    )
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["images"] == 8 and metrics["instances"] > 0
    assert 0 <= metrics["map50_95"] <= metrics["map50"] <= 1


def _tiny_model(nc):
    from models.loader import load_model

    return load_model("yolov5n.yaml", nc=nc)


def test_run_folders_increment(shapes_yaml, tmp_path):
    kw = dict(weights="x", data=str(shapes_yaml), imgsz=64, batch_size=8, workers=0, project=str(tmp_path),
              no_progress=True)
    _, d1 = val.run(model=_tiny_model(4), **kw)
    _, d2 = val.run(model=_tiny_model(4), **kw)
    assert (d1.name, d2.name) == ("exp", "exp2")
    assert (d1 / "metrics.json").exists()


def test_builtin_dataset_resolves_by_name():
    from data.datasets import check_dataset

    d = check_dataset("shapes")
    assert d["names"] == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    assert len(d["val"]) == 1 and Path(d["val"][0]).is_dir()


def test_cli_on_builtin_dataset(shapes_yaml, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = val.main(["--weights", str(ROOT / "models" / "yolov5n.yaml"), "--data", str(shapes_yaml), "--img", "64",
                   "--batch", "16", "--workers", "0", "--no-progress", "--project", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "mAP50-95" in out and "Speed:" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "missing.pt", "--data", "shapes"], "weights file 'missing.pt' not found"),
        (["--weights", "yolov5n.yaml", "--data", "no_such_data.yaml"], "data yaml 'no_such_data.yaml' not found"),
        (["--weights", "yolov5n.yaml", "--device", "7"], "--device 7 requested but this machine has"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = val.main(args + ["--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written on bad input


def test_data_yaml_without_names(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    y = tmp_path / "d.yaml"
    y.write_text(f"path: {tmp_path}\nval: images\n")
    rc = val.main(["--weights", "yolov5n.yaml", "--data", str(y), "--project", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no 'names'" in err


def test_data_yaml_with_missing_val_path(tmp_path, capsys):
    y = tmp_path / "d.yaml"
    y.write_text("path: .\nval: images/nowhere\nnames: [a, b]\n")
    rc = val.main(["--weights", "yolov5n.yaml", "--data", str(y), "--project", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "'val' path" in err and "does not exist" in err


def test_relative_path_resolves_against_yaml_folder(tmp_path, shapes_yaml, monkeypatch):
    import yaml

    from data.datasets import check_dataset

    src = yaml.safe_load(shapes_yaml.read_text())
    d = tmp_path / "sub"
    d.mkdir()
    (d / "ds").symlink_to(src["path"])
    y = d / "rel.yaml"
    y.write_text(yaml.safe_dump({**src, "path": "ds"}))
    monkeypatch.chdir(tmp_path)  # cwd differs from the yaml's folder
    out = check_dataset(str(y))
    assert out["path"] == str((d / "ds").resolve()) and out["nc"] == len(src["names"])


def test_class_count_mismatch_is_reported(shapes_yaml, tmp_path):
    from utils.general import UsageError

    with pytest.raises(UsageError, match="predicts 80 classes"):
        val.run(weights="yolov5n.yaml", data=str(shapes_yaml), model=_tiny_model(80), project=str(tmp_path))


@pytest.mark.assets
@need(YOLOV5N_PT)
def test_reproduces_official_yolov5_val_at_320(coco128_yaml, tmp_path):
    """REFERENCE.md: official val.py, yolov5n.pt, coco128 @320: P .452 R .445 mAP50 .453 mAP50-95 .290."""
    res, save_dir = val.run(weights=str(YOLOV5N_PT), data=str(coco128_yaml), imgsz=320, batch_size=32,
                            workers=2, project=str(tmp_path), no_progress=True)
    assert abs(res.map50 - 0.453) <= 0.003 and abs(res.map50_95 - 0.290) <= 0.003
    assert abs(res.precision - 0.452) <= 0.01 and abs(res.recall - 0.445) <= 0.01
    assert res.images == 128 and res.instances == 929
    m = json.loads((save_dir / "metrics.json").read_text())
    assert m["params"] == 1867405 and abs(m["gflops"] - 4.5 / 4) < 0.05


@pytest.mark.assets
@pytest.mark.slow
@need(YOLOV5N_PT)
def test_reproduces_official_yolov5_val_at_640(coco128_yaml, tmp_path):
    """REFERENCE.md: official val.py, yolov5n.pt, coco128 @640: P .572 R .508 mAP50 .560 mAP50-95 .361."""
    res, _ = val.run(weights=str(YOLOV5N_PT), data=str(coco128_yaml), imgsz=640, batch_size=32, workers=2,
                     project=str(tmp_path), no_progress=True)
    assert abs(res.map50 - 0.560) <= 0.003 and abs(res.map50_95 - 0.361) <= 0.003
    assert abs(res.precision - 0.572) <= 0.01 and abs(res.recall - 0.508) <= 0.01


def _coco_annotations(coco128_yaml) -> Path:
    """instances_train2017.json for COCO128 built from its YOLO labels (COCO's 91 category ids)."""
    import cv2
    from ultralytics.data.converter import coco80_to_coco91_class

    root = coco128_yaml.parent
    cat91 = coco80_to_coco91_class()
    images, anns = [], []
    for img in sorted((root / "images" / "train2017").glob("*.jpg")):
        h, w = cv2.imread(str(img)).shape[:2]
        iid = int(img.stem)
        images.append({"id": iid, "file_name": img.name, "height": h, "width": w})
        lab = root / "labels" / "train2017" / f"{img.stem}.txt"
        for line in (lab.read_text().splitlines() if lab.exists() else []):
            c, x, y, bw, bh = map(float, line.split())
            box = [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat91[int(c)], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    out = root / "annotations" / "instances_train2017.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": i} for i in sorted(set(cat91))]}))
    return out


@pytest.mark.assets
@need(YOLOV5N_PT)
def test_save_json_runs_pycocotools_with_coco_ids(coco128_yaml, tmp_path):
    """Any 80-class COCO-named dataset gets the 80->91 id mapping (not only paths ending in coco/val2017)."""
    _coco_annotations(coco128_yaml)
    res, save_dir = val.run(weights=str(YOLOV5N_PT), data=str(coco128_yaml), imgsz=320, batch_size=32, workers=2,
                            project=str(tmp_path), no_progress=True, save_json=True)
    preds = json.loads((save_dir / "yolov5n_predictions.json").read_text())
    assert {p["category_id"] for p in preds} - set(range(1, 91)) == set() and max(p["category_id"] for p in preds) > 80
    m = json.loads((save_dir / "metrics.json").read_text())
    # pycocotools' AP differs a little from YOLOv5's 101-point interpolation, but must be of the same size
    assert abs(m["coco_map50_95"] - res.map50_95) < 0.03 and abs(m["coco_map50"] - res.map50) < 0.05


@pytest.mark.parametrize("cfg", ["yolov7-tiny.yaml", "yolov8n.yaml", "v5.0/yolov5n.yaml"])
def test_val_every_family(cfg, shapes_yaml, tmp_path):
    res, save_dir = val.run(weights=cfg, data=str(shapes_yaml), imgsz=64, batch_size=8, workers=0,
                            project=str(tmp_path), no_progress=True, conf_thres=0.05)
    assert res.images == 8 and (save_dir / "metrics.json").exists()
