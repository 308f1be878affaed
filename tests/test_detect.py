# AGPL-3.0 License
"""detect.py: every source kind, every family, full or pruned, YOLOv5's label format, offline drawing."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect

FAST = ["--img", "64", "--conf-thres", "0.0001", "--max-det", "3"]


@pytest.fixture(scope="module")
def images(shapes_yaml, tmp_path_factory) -> Path:
    """Four of the built-in dataset's 160 px images in a folder of their own."""
    d = tmp_path_factory.mktemp("images")
    for f in sorted((shapes_yaml.parent / "images" / "val").glob("*.png"))[:4]:
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """A yolov5n (4 classes) and the same model with 30% of every layer's channels cut."""
    from models.loader import load_model
    from prune.sensitivity import prune_layers
    from utils.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    full = load_model("yolov5n.yaml", nc=4)
    out = {"full": save_checkpoint({"model": full}, d / "full.pt")}
    prune_layers(full, 0.3, "l1", imgsz=64)
    out["pruned"] = save_checkpoint({"model": full}, d / "pruned.pt")
    return out


def _video(path: Path, frames: list[np.ndarray], fourcc: str) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()
    assert path.stat().st_size > 0
    return path


def _run(argv, tmp_path) -> Path:
    assert detect.main([*argv, *FAST, "--project", str(tmp_path / "runs")]) == 0
    return sorted((tmp_path / "runs").iterdir())[-1]


@pytest.mark.parametrize("kind", ["image", "folder", "glob", "mp4", "avi", "txt"])
def test_every_source_kind(kind, images, weights, tmp_path):
    pngs = sorted(images.glob("*.png"))
    frames = [cv2.resize(cv2.imread(str(p)), (160, 128)) for p in pngs[:3]]  # a video has one frame size
    source = {
        "image": lambda: pngs[0],
        "folder": lambda: images,
        "glob": lambda: f"{images}/*[01].png",
        "mp4": lambda: _video(tmp_path / "clip.mp4", frames, "mp4v"),
        "avi": lambda: _video(tmp_path / "clip.avi", frames, "MJPG"),
        "txt": lambda: _txt(tmp_path, [pngs[0], _video(tmp_path / "clip.avi", frames, "MJPG")]),
    }[kind]()
    save = _run(["--weights", str(weights["full"]), "--source", str(source), "--save-txt"], tmp_path)
    out = sorted(p.name for p in save.iterdir() if p.is_file())
    labels = sorted(p.name for p in (save / "labels").iterdir())
    expect = {
        "image": (["000000.png"], ["000000.txt"]),
        "folder": ([p.name for p in pngs], [f"{p.stem}.txt" for p in pngs]),
        "glob": (["000000.png", "000001.png"], ["000000.txt", "000001.txt"]),
        "mp4": (["clip.mp4"], ["clip_1.txt", "clip_2.txt", "clip_3.txt"]),
        "avi": (["clip.mp4"], ["clip_1.txt", "clip_2.txt", "clip_3.txt"]),
        "txt": (["000000.png", "clip.mp4"], ["000000.txt", "clip_1.txt", "clip_2.txt", "clip_3.txt"]),
    }[kind]
    assert (out, labels) == expect
    for f in save.iterdir():
        if f.suffix == ".png":  # an annotated copy, same size as the input
            assert cv2.imread(str(f)).shape == cv2.imread(str(images / f.name)).shape
        if f.suffix == ".mp4":
            cap = cv2.VideoCapture(str(f))
            assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and cap.read()[1].shape == frames[0].shape
    assert not [p for p in save.rglob(".*")]  # no temporary file left


def _txt(tmp_path: Path, files) -> Path:
    f = tmp_path / "list.txt"
    f.write_text("\n".join(str(x) for x in files) + "\n")
    return f


def test_labels_are_yolov5_format(images, weights, tmp_path):
    from engine.predictor import run

    save, results = run(str(weights["full"]), str(images), imgsz=64, conf_thres=0.0001, max_det=3, save_txt=True,
                        save_conf=True, project=str(tmp_path), nosave=True)
    assert not list(save.glob("*.png"))  # --nosave: labels only
    for r in results:
        rows = [list(map(float, line.split())) for line in (save / "labels" / f"{Path(r['path']).stem}.txt")
                .read_text().splitlines()]
        det, (h, w) = r["det"], r["shape"]
        assert len(rows) == len(det) > 0
        for row, (x1, y1, x2, y2, conf, cls) in zip(rows, det):
            assert len(row) == 6 and row[0] == int(cls) and 0 <= row[0] < 4
            expect = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h, conf]
            assert np.allclose(row[1:], expect, atol=1e-5) and all(0 <= v <= 1 for v in row[1:5])
    # without --save-conf: five columns
    save, _ = run(str(weights["full"]), str(images), imgsz=64, conf_thres=0.0001, max_det=3, save_txt=True,
                  project=str(tmp_path), nosave=True)
    assert all(len(line.split()) == 5 for f in (save / "labels").iterdir() for line in f.read_text().splitlines())
    # --classes keeps only those classes
    _, results = run(str(weights["full"]), str(images), imgsz=64, conf_thres=0.0, max_det=5, classes=[1, 3],
                     project=str(tmp_path), nosave=True)
    cls = np.concatenate([r["det"][:, 5] for r in results])
    assert len(cls) and set(cls.tolist()) <= {1.0, 3.0}


@pytest.mark.parametrize("which", ["pruned", "yolov7-tiny.yaml", "yolov8n.yaml", "v5.0/yolov5n.yaml", "yolo26n.yaml"])
def test_every_family_full_or_pruned(which, images, weights, tmp_path):
    from engine.predictor import run

    w = weights.get(which, which)
    save, results = run(str(w), str(images), imgsz=64, conf_thres=0.0, max_det=3, project=str(tmp_path),
                        save_crop=True)  # conf 0: untrained heads score very low
    assert len(results) == 4 and all(r["det"].shape[1] == 6 for r in results)
    assert sorted(p.name for p in save.glob("*.png")) == sorted(p.name for p in images.glob("*.png"))
    crops = list((save / "crops").rglob("*.jpg"))
    assert len(crops) == sum(len(r["det"]) for r in results) > 0  # one crop per box, repeated names numbered


def test_offline_drawing_never_fetches_a_font(images, weights, tmp_path, monkeypatch, network_attempts):
    """ultralytics fetches Arial.ttf / Arial.Unicode.ttf for PIL text: neither may be needed, even for class names
    outside ASCII, with the network unreachable."""
    import ultralytics.utils.checks as checks
    import ultralytics.utils.plotting as plotting

    from engine.predictor import run
    from models.loader import load_model

    real = checks.check_font  # a font file given by path is fine; a font looked up by name may be fetched
    monkeypatch.setattr(plotting, "check_font", lambda f="Arial.ttf": real(f) if Path(str(f)).is_file()
                        else network_attempts.append(f))
    from matplotlib import font_manager

    # matplotlib's font list without the bundled fonts (as after a rebuild, seen in the full suite): ultralytics'
    # check_font would then download even a font given as a file
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [])
    for names in ({0: "circle", 1: "square", 2: "triangle", 3: "cross"}, {0: "круг", 1: "квадрат", 2: "三角形", 3: "x"}):
        m = load_model(weights["full"], fuse=True)
        m.names = names
        save, results = run("m", str(images), imgsz=64, conf_thres=0.0001, max_det=3, project=str(tmp_path), model=m)
        assert len(list(save.glob("*.png"))) == 4 and sum(len(r["det"]) for r in results) > 0
    assert network_attempts == []


def test_view_img_without_display_warns(images, weights, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    save = _run(["--weights", str(weights["full"]), "--source", str(images), "--view-img"], tmp_path)
    assert "WARNING: --view-img: no display here" in capsys.readouterr().out
    assert len(list(save.glob("*.png"))) == 4  # the files are still saved


@pytest.mark.parametrize("argv, msg", [
    (["--source", "nowhere/*.jpg"], "--source nowhere/*.jpg"),
    (["--source", "missing.png"], "missing.png does not exist"),
    (["--source", "0"], "webcams and streams are not supported"),
    (["--classes", "7"], "--classes 7: this model predicts classes 0-3"),
    (["--img", "64", "64", "64"], "--imgsz takes one or two"),
])
def test_bad_input_is_one_line(argv, msg, images, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = ["--weights", str(weights["full"]), "--source", str(images), *argv]
    rc = detect.main([*full, "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ERROR: ") and msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no run folder for a run that cannot start
