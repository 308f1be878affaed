# AGPL-3.0 License
"""Segmentation models end to end: the shapes data's masks, the graph over Segment's mask branch and Proto, the
loss terms the oracle compares, val.py's mask metrics, export with both outputs, ultralytics on a pruned model,
and bad input refused in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import compress
import detect
import export
import train
import val
from data.shapes import ensure_shapes
from models.loader import load_model, model_task
from models.loss import build_criterion
from prune.groups import GroupSet
from prune.masks import ChannelMasks
from prune.surgery import apply_removal
from prune.verify import verify_groups
from prune.widths import mark_yaml_pruned, width_mismatches

NAMES = {0: "circle", 1: "square", 2: "triangle", 3: "cross"}


def _outputs(out) -> list[torch.Tensor]:
    """Boxes (with mask coefficients) and mask protos of a segmentation model's eval output ((y, proto), raw)."""
    return [out[0][0], out[0][1]]


@pytest.fixture(scope="module")
def seg_yaml(tmp_path_factory) -> Path:
    """A small `builtin: shapes` spec labelled for segmentation (generated on first use)."""
    p = tmp_path_factory.mktemp("segdata") / "shapes-seg-small.yaml"
    p.write_text(yaml.safe_dump({"builtin": "shapes", "task": "segment", "n_train": 8, "n_val": 4, "seed": 0}))
    return p


@pytest.fixture(scope="module")
def pruned_pt(tmp_path_factory) -> Path:
    """yolov8n-seg (4 classes) with every third channel of every prunable group cut, saved as compress.py does."""
    torch.manual_seed(0)
    model = load_model("yolov8n-seg.yaml", nc=4)
    model.names = dict(NAMES)
    groups = GroupSet(model, torch.rand(1, 3, 64, 64))
    apply_removal(model, groups, {g.id: list(range(0, len(g), 3)) for g in groups.prunable})
    mark_yaml_pruned(model)
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    torch.save({"model": copy.deepcopy(model).half(), "epoch": -1}, path)
    return path


# ------------------------------------------------------------------------------------------------------- data
def test_shapes_task_labels(tmp_path):
    """The same images labelled four ways: each polygon's extent is its object's box, each OBB holds its box's
    centre, the pose rows carry kpt_shape keypoints inside their box; ultralytics' YOLODataset reads each task."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    roots = {t: ensure_shapes(tmp_path, 6, 2, 0, t).parent for t in ("detect", "segment", "pose", "obb")}
    spec = yaml.safe_load((roots["pose"] / "shapes.yaml").read_text())
    kn, kd = spec["kpt_shape"]
    for f in sorted((roots["detect"] / "labels" / "train").glob("*.txt")):
        boxes = np.loadtxt(f, ndmin=2).reshape(-1, 5)
        rows = {t: [np.array(r.split(), float) for r in (roots[t] / "labels" / "train" / f.name).read_text().splitlines()]
                for t in ("segment", "pose", "obb")}
        assert len(rows["segment"]) == len(rows["pose"]) == len(rows["obb"]) == len(boxes), f.name
        img = cv2.imread(str(roots["detect"] / "images" / "train" / f.with_suffix(".png").name))
        tol = 1.5 / min(img.shape[:2])
        for box, seg, pose, obb in zip(boxes, rows["segment"], rows["pose"], rows["obb"]):
            assert seg[0] == pose[0] == obb[0] == box[0]
            xy = seg[1:].reshape(-1, 2)
            x0, y0, x1, y1 = box[1] - box[3] / 2, box[2] - box[4] / 2, box[1] + box[3] / 2, box[2] + box[4] / 2
            assert len(xy) >= 3 and np.allclose(xy.min(0), [x0, y0], atol=tol) and np.allclose(xy.max(0), [x1, y1], atol=tol)
            corners = obb[1:].reshape(4, 2).astype(np.float32)
            assert cv2.pointPolygonTest(corners, (float(box[1]), float(box[2])), False) >= 0
            assert np.allclose(pose[1:5], box[1:], atol=1e-6) and len(pose) == 5 + kn * kd
            k = pose[5:].reshape(kn, kd)
            vis = k[:, 2] > 0
            assert ((k[vis, 0] >= x0 - tol) & (k[vis, 0] <= x1 + tol) & (k[vis, 1] >= y0 - tol) & (k[vis, 1] <= y1 + tol)).all()
    for task, key in (("segment", "masks"), ("pose", "keypoints"), ("obb", "bboxes")):
        d = {**yaml.safe_load((roots[task] / "shapes.yaml").read_text()), "channels": 3}
        ds = YOLODataset(img_path=str(roots[task] / "images" / "train"), imgsz=64, augment=False,
                         hyp=get_cfg(overrides={"task": task}), data=d, task=task, batch_size=2)
        item = next(ds[i] for i in range(len(ds)) if len(ds.labels[i]["cls"]))
        assert key in item and len(item["cls"]), task
        if task == "obb":
            assert item["bboxes"].shape[1] == 5  # xywhr


# ------------------------------------------------------------------------------------------------------- graph
@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo11n-seg.yaml"])
def test_graph_covers_mask_branch_and_proto(cfg):
    """Segment's mask-coefficient convs and Proto's internal convs are prunable groups, the verification finds no
    disagreement, and cutting channels of every group equals masking them on both outputs; the number of masks
    (nm) and the output shapes stay, Proto's width (npr) follows its layers."""
    torch.manual_seed(0)
    model = load_model(cfg, nc=4).eval()
    x = torch.rand(1, 3, 64, 64)
    groups = GroupSet(model, x)
    producers = [p for g in groups.prunable for p in g.producers]
    head = f"model.{len(model.model) - 1}"
    assert any(p.startswith(f"{head}.cv4.") for p in producers) and any(p.startswith(f"{head}.proto.") for p in producers)
    assert not any(p.startswith(f"{head}.proto.cv3") or p.endswith("cv4.0.2") for p in producers)  # outputs fixed
    assert verify_groups(model, groups, x) == []
    plan = {g.id: list(range(0, len(g), 3)) for g in groups.prunable}
    with torch.no_grad(), ChannelMasks(model, groups) as masks:
        for gid, pos in plan.items():
            masks.set_removed(gid, pos)
        ref = _outputs(model(x))
    cut = apply_removal(copy.deepcopy(model), groups, plan).eval()
    with torch.no_grad():
        out = _outputs(cut(x))
    for a, b in zip(out, ref):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    h = cut.model[-1]
    assert width_mismatches(cut) == [] and h.nm == model.model[-1].nm and h.npr < model.model[-1].npr
    assert h.npr == h.proto.cv1.conv.out_channels and model_task(cut) == "segment"


def test_loss_terms_are_oracle_tasks(seg_yaml):
    """The oracle compares ultralytics' segmentation terms one by one: box, seg, cls, dfl, each finite."""
    from data.datasets import check_dataset
    from data.tasks import for_task
    from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches

    model = load_model("yolov8n-seg.yaml", nc=4)
    crit = build_criterion(model, None, 64)
    assert crit.names == ("box", "seg", "cls", "dfl")
    data = for_task(check_dataset(seg_yaml, splits=("train", "val")), "segment")
    batches = calibration_batches(data, 64, 4, 2, 0)
    assert "masks" in batches[0]
    losses = CalibrationOracle(model, batches, crit, list(crit.names))()
    assert losses.shape == (4,) and np.isfinite(losses).all() and (losses > 0).all()


# ------------------------------------------------------------------------------------------------------- tools
def test_val_writes_mask_metrics(pruned_pt, seg_yaml, tmp_path, capsys):
    rc = val.main(["--weights", str(pruned_pt), "--data", str(seg_yaml), "--imgsz", "64", "--device", "cpu",
                   "--workers", "0", "--project", str(tmp_path)])
    assert rc in (0, None)
    out = capsys.readouterr()
    assert "all (mask)" in out.out + out.err
    m = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    assert set(m["mask"]) >= {"precision", "recall", "map50", "map50_95"} and m["instances"] > 0


def test_export_onnx_both_outputs(pruned_pt, tmp_path):
    """ONNX keeps the mask protos beside the boxes and matches PyTorch on both (export.py checks every output;
    here onnxruntime is compared once more by hand)."""
    import onnxruntime as ort

    rc = export.main(["--weights", str(pruned_pt), "--imgsz", "64", "--include", "onnx"])
    f = pruned_pt.with_suffix(".onnx")  # written beside the weights
    assert rc in (0, None) and f.is_file()
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1"]
    x = torch.rand(1, 3, 64, 64)
    outs = sess.run(None, {"images": x.numpy()})
    model = load_model(str(pruned_pt), fuse=True)
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True
    with torch.no_grad():
        ref = model(x)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape) and np.abs(o - r.numpy()).max() < 1e-3


def test_detect_draws_masks(pruned_pt, tmp_path):
    img = tmp_path / "im.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    rc = detect.main(["--weights", str(pruned_pt), "--source", str(img), "--imgsz", "64", "--device", "cpu",
                      "--conf-thres", "0.0001", "--project", str(tmp_path / "runs")])
    assert rc in (0, None) and (tmp_path / "runs" / "exp" / "im.png").is_file()


def test_ultralytics_on_pruned(pruned_pt, seg_yaml, tmp_path):
    """YOLO(pruned) keeps its task: val gives mask metrics, predict gives masks."""
    from ultralytics import YOLO

    from data.datasets import check_dataset

    data = check_dataset(seg_yaml)["yaml_file"]
    y = YOLO(str(pruned_pt))
    assert y.task == "segment"
    r = y.val(data=data, imgsz=64, batch=4, device="cpu", plots=False, workers=0, project=str(tmp_path), name="v")
    assert hasattr(r, "seg") and 0.0 <= r.seg.map50 <= 1.0
    p = y.predict(np.full((64, 64, 3), 114, np.uint8), imgsz=64, conf=1e-4, verbose=False)[0]
    assert p.masks is not None or len(p.boxes) == 0


def test_pruned_segmentation_trainer(pruned_pt, seg_yaml, tmp_path):
    from ultralytics import YOLO

    from data.datasets import check_dataset
    from engine.ultralytics_trainer import PrunedSegmentationTrainer

    y = YOLO(str(pruned_pt))
    n = sum(p.numel() for p in y.model.parameters())
    y.train(trainer=PrunedSegmentationTrainer, data=check_dataset(seg_yaml)["yaml_file"], epochs=1, imgsz=64,
            batch=4, device="cpu", workers=0, plots=False, project=str(tmp_path), name="t")
    trained = YOLO(str(tmp_path / "t" / "weights" / "last.pt"))
    assert trained.task == "segment" and sum(p.numel() for p in trained.model.parameters()) == n


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l1", "pagcp"])
def test_compress_cli(method, seg_yaml, tmp_path):
    """compress.py on a segmentation model: pruned to the target, fine-tuned with the segmentation loss, mask
    metrics in the summary; PAGCP reports each loss term's growth per unit."""
    extra = ["--calib-images", "4", "--ratio-step", "0.3"] if method == "pagcp" else []
    rc = compress.main(["--weights", "yolov8n-seg.yaml", "--data", str(seg_yaml), "--method", method,
                        "--target-flops", "0.7", "--epochs", "1", "--imgsz", "64", "--device", "cpu", "--workers", "0",
                        "--batch-size", "4", "--no-latency", "--one-shot", "--project", str(tmp_path), *extra])
    assert rc in (0, None)
    run = tmp_path / "exp"
    s = json.loads((run / "summary.json").read_text())
    assert "mask_map50_95" in s["base"] and "mask_map50_95" in s["rounds"][-1]
    model = load_model(str(run / "pruned.pt"))
    assert model_task(model) == "segment" and type(model.model[-1]).__name__ == "Segment"
    assert "seg_loss" in (run / "round_0" / "results.csv").read_text()
    if method == "pagcp":
        assert "seg=" in (run / "round_0" / "units.txt").read_text()


def test_train_cli_seg(pruned_pt, seg_yaml, tmp_path):
    rc = train.main(["--weights", str(pruned_pt), "--data", str(seg_yaml), "--epochs", "1", "--imgsz", "64",
                     "--batch-size", "4", "--device", "cpu", "--workers", "0", "--project", str(tmp_path)])
    assert rc in (0, None)
    assert "seg_loss" in (tmp_path / "exp" / "results.csv").read_text()


# ------------------------------------------------------------------------------------------------------- bad input
def _one_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ERROR: "), err
    return err[0]


def test_seg_model_with_detection_data(shapes_yaml, tmp_path, capsys):
    rc = compress.main(["--weights", "yolov8n-seg.yaml", "--data", str(shapes_yaml), "--method", "l1", "--ratio", "0.5",
                        "--epochs", "0", "--imgsz", "64", "--device", "cpu", "--no-latency", "--project",
                        str(tmp_path / "runs")])
    line = _one_error(capsys, rc)
    assert "boxes only" in line and "segment" in line and not (tmp_path / "runs").exists()


def test_detection_model_with_task_data(seg_yaml, tmp_path, capsys):
    rc = val.main(["--weights", "yolov8n.yaml", "--data", str(seg_yaml), "--imgsz", "64", "--device", "cpu",
                   "--project", str(tmp_path / "runs")])
    line = _one_error(capsys, rc)
    assert "segment labels" in line and "detect model" in line and not (tmp_path / "runs").exists()


def test_exported_seg_and_other_formats_refused(pruned_pt, seg_yaml, tmp_path, capsys):
    rc = export.main(["--weights", str(pruned_pt), "--imgsz", "64", "--include", "openvino", "--project",
                      str(tmp_path / "x")])
    assert "onnx and torchscript" in _one_error(capsys, rc) and not (tmp_path / "x").exists()
    export.main(["--weights", str(pruned_pt), "--imgsz", "64", "--include", "onnx"])
    capsys.readouterr()
    f = pruned_pt.with_suffix(".onnx")
    rc = val.main(["--weights", str(f), "--data", str(seg_yaml), "--imgsz", "64", "--project", str(tmp_path / "v")])
    assert "exported segment model" in _one_error(capsys, rc)
