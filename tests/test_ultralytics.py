# AGPL-3.0 License
"""Pruned Ultralytics models stay ultralytics models: width bookkeeping, ultralytics' own alternate forward paths,
`YOLO(p).export`, training through ultralytics, predict and val agreement."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_prune import _random_plan, _randomize_bn

from models.loader import load_model
from prune import apply_removal, build_groups
from prune.widths import PRUNED_MESSAGE, RULES, is_yaml_pruned, uncovered_widths, width_mismatches
from utils.checkpoint import save_checkpoint

ULTRALYTICS = ["yolov8n.yaml", "yolov9t.yaml", "yolov10n.yaml", "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml"]
# every detection yaml family the engine claims, plus the larger scales that add blocks (A2C2f residual, C3k2 attn)
ALL_YAMLS = ULTRALYTICS + ["yolov5nu.yaml", "yolov9c.yaml", "yolo12l.yaml", "yolov6n.yaml", "yolov3-tiny.yaml",
                           "v5.0/yolov5n.yaml", "yolov5s.yaml", "yolov7-tiny.yaml"]


def _pruned(cfg: str, seed: int = 1, imgsz: int = 64):
    """(unpruned, pruned) pair of a yaml-built model with random BN statistics, ~30% of 60% of groups cut."""
    torch.manual_seed(0)
    model = load_model(cfg, nc=3).eval()
    _randomize_bn(model)
    groups = build_groups(model, imgsz=imgsz)
    return model, apply_removal(copy.deepcopy(model), groups, _random_plan(groups, seed=seed)).eval()


def _out(y):
    return y[0] if isinstance(y, (list, tuple)) else y


def _close(a, b, tol=1e-4):
    a, b = (np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("cfg", ALL_YAMLS)
def test_width_rules_cover_every_block(cfg):
    """Fail closed: a block keeping an int attribute that no rule in prune/widths.py explains is listed here."""
    model = load_model(cfg, nc=3)
    assert uncovered_widths(model) == {}
    assert width_mismatches(model) == []


def test_uncovered_width_attribute_fails_closed():
    class Hidden(nn.Module):  # stores a width the way C2f stores `c`, but no rule knows it
        def __init__(self):
            super().__init__()
            self.hidden = 8
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 3, 1), Hidden(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.block(self.stem(x)))

    from prune import GroupSet

    net = Net()
    assert uncovered_widths(net) == {"block": ["hidden"]}
    groups = GroupSet(net, torch.rand(1, 3, 16, 16))
    by = {tuple(g.producers): g for g in groups.groups}
    assert not by[("block.a",)].prunable and not by[("block.b",)].prunable
    assert any("block (Hidden) keeps width attributes ['hidden']" in line for line in groups.graph.log)
    assert ("ultralytics", "C2f") in RULES  # the rule that fixes the export failure


@pytest.mark.parametrize("cfg", ULTRALYTICS)
def test_pruned_model_in_ultralytics_paths_and_export(cfg, tmp_path):
    """forward_split (what ultralytics' exporter uses), fused forward, export=True forward and the end-to-end head
    agree with the toolkit's forward of the pruned model; `YOLO(pruned.pt).export(format='onnx' | 'torchscript')`
    runs and the files compute the same output."""
    import onnxruntime as ort
    from ultralytics import YOLO
    from ultralytics.nn.modules import Detect

    base, model = _pruned(cfg)
    stale = [f"{n}.{k}" for n, m in base.named_modules() for k, v in vars(m).items()
             if k in ("c", "head_dim", "all_head_dim", "key_dim") and getattr(dict(model.named_modules()).get(n), k) != v]
    assert width_mismatches(model) == []
    assert stale or cfg.startswith("yolov10"), "the plan should have changed some block's own width"
    assert is_yaml_pruned(model.yaml) and not is_yaml_pruned(base.yaml)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = _out(model(x))
        split = copy.deepcopy(model)
        for m in split.modules():
            if hasattr(m, "forward_split"):
                m.forward = m.forward_split
        _close(_out(split(x)), ref)
        fused = copy.deepcopy(model).fuse(verbose=False)
        _close(_out(fused(x)), ref)
        head = fused.model[-1]
        assert isinstance(head, Detect)
        head.export, head.shape = True, None
        _close(fused(x), ref)
        if getattr(head, "one2one_cv2", None) is not None:  # end-to-end heads: the NMS-free branch too
            e2e = copy.deepcopy(model)
            e2e.end2end = True
            y = _out(e2e(x))
            assert y.shape == (2, 300, 6)
            _close(_out(copy.deepcopy(e2e).fuse(verbose=False)(x)), y)

    w = save_checkpoint({"model": model, "epoch": -1}, tmp_path / "pruned.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_file = YOLO(str(w)).export(format="onnx", imgsz=64, simplify=False, device="cpu")
        ts_file = YOLO(str(w)).export(format="torchscript", imgsz=64, device="cpu")
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0], ref[:1], 1e-3)
    with torch.no_grad():
        _close(_out(torch.jit.load(str(ts_file))(x[:1])), ref[:1], 1e-3)


def test_verify_catches_a_dependency_the_tracer_misses(monkeypatch):
    """Without its rule, ultralytics Attention's `view(B, C, H, W)` (C read from x.shape) breaks when the input of
    YOLO26's C3k2-attention block is cut: build_groups' cut-vs-mask check finds the group and keeps it."""
    import prune.widths as widths

    monkeypatch.setitem(RULES, ("ultralytics", "Attention"), widths.WidthRule(widths._attention, ("num_heads",)))
    model = load_model("yolo26n.yaml", nc=3)
    groups = build_groups(model, imgsz=64)
    broken = [g for g in groups.groups if "model.22.m.0.1.attn.proj.conv" in g.producers]
    assert broken and not broken[0].prunable and broken[0].reason.startswith("cutting it breaks the model")
    assert any("cutting a channel" in line for line in groups.graph.log)
    monkeypatch.undo()  # with the rule, the block is kept whole up front (no bisection needed)
    again = build_groups(model, imgsz=64, verify=False)
    assert not next(g for g in again.groups if "model.22.m.0.1.attn.proj.conv" in g.producers).prunable
    assert any("reshapes to its input's x.shape" in line for line in again.graph.log)


@pytest.mark.parametrize("cfg, method", [
    ("yolo12n.yaml", "l1"), ("yolo26n.yaml", "l1"), ("yolo12n.yaml", "pagcp"), ("yolo26n.yaml", "pagcp")])
def test_newest_families_cli(cfg, method, shapes_yaml, tmp_path):
    """compress.py --method l1 / PAGCP on YOLO12 and YOLO26, then export.py of the result (checked against PyTorch
    by export.py itself) and val.py."""
    import json

    import compress
    import export
    import val

    budget = (["--method", "l1", "--target-flops", "0.8"] if method == "l1" else
              ["--method", "pagcp", "--compression", "backbone", "--ratio-step", "0.5", "--exp", "--initial_rate",
               "0.05", "--initial_thres", "2", "--reference-protocol"])
    rc = compress.main(["--weights", cfg, "--data", str(shapes_yaml), "--epochs", "0", "--img", "64", "--batch", "8",
                        "--workers", "0", "--no-latency", "--calib-images", "4", "--bn-recalib", "8", *budget,
                        "--project", str(tmp_path)])
    assert rc == 0
    s = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert s["after"]["gflops"] < s["before"]["gflops"] and s["after"]["params"] < s["before"]["params"]
    pruned = tmp_path / "exp" / "pruned.pt"
    assert width_mismatches(load_model(pruned)) == []
    if method == "l1":
        res = export.run(weights=str(pruned), include=["onnx", "torchscript"], imgsz=[64], device="cpu")
        assert all(r["max_diff"] < 1e-3 for r in res.values())
        out, _ = val.run(weights=str(pruned), data=str(shapes_yaml), imgsz=64, workers=0, no_progress=True,
                         project=str(tmp_path / "val"))
        assert out.convention == "ultralytics" and out.images == 8


def test_plain_ultralytics_rebuild_is_refused():
    """DetectionModel(pruned.yaml) -- what YOLO(p).train() and resume do -- stops with the message, not silently."""
    from ultralytics.nn.tasks import DetectionModel

    _, model = _pruned("yolov8n.yaml")
    with pytest.raises(KeyError, match="PrunedDetectionTrainer"):
        DetectionModel(copy.deepcopy(model.yaml), nc=3, verbose=False)
    assert "YOLO(p).train(trainer=PrunedDetectionTrainer" in PRUNED_MESSAGE


def _pruned_checkpoint(tmp_path, cfg="yolov8n.yaml", nc=4, seed=2, scores_bias=None):
    """A pruned ultralytics model saved as compress.py saves it (FP16). scores_bias makes the untrained model detect:
    the class logits' bias (0.0: scores around 0.5) and box distributions leaning to small distances (boxes of a
    few strides instead of the image-sized ones random BN statistics give)."""
    torch.manual_seed(0)
    model = load_model(cfg, nc=nc).eval()
    _randomize_bn(model)
    groups = build_groups(model, imgsz=64)
    apply_removal(model, groups, _random_plan(groups, seed=seed))
    if scores_bias is not None:
        head = model.model[-1]
        e2e = getattr(head, "one2one_cv2", None) is not None  # end-to-end: the one-to-one head alike
        with torch.no_grad():
            for branch in [*head.cv3, *(head.one2one_cv3 if e2e else [])]:
                branch[-1].bias.fill_(scores_bias)
            for branch in [*head.cv2, *(head.one2one_cv2 if e2e else [])]:
                if head.reg_max > 1:  # DFL: distributions leaning to 0-1 strides
                    branch[-1].weight.mul_(1e-3)
                    branch[-1].bias.copy_(torch.linspace(4, -12, head.reg_max).repeat(4))
                else:  # YOLO26 regresses distances directly: ~1 stride, varied (equal boxes make IoU ties)
                    branch[-1].weight.mul_(0.1 / max(float(branch[-1].weight.abs().max()), 1e-6))
                    branch[-1].bias.fill_(1.0)
    return save_checkpoint({"model": copy.deepcopy(model).half(), "epoch": -1}, tmp_path / "pruned.pt"), model


def test_ultralytics_trainer_keeps_pruned_structure(shapes_yaml, tmp_path):
    """Supported: YOLO(p).train(trainer=PrunedDetectionTrainer) trains the pruned model itself. Unsupported: plain
    YOLO(p).train() stops with the message instead of rebuilding the unpruned model from the yaml."""
    from ultralytics import YOLO

    from engine.ultralytics_trainer import PrunedDetectionTrainer
    from prune.surgery import channel_table
    from utils.flops import count_params

    w, model = _pruned_checkpoint(tmp_path)
    n_params, table = count_params(model), channel_table(model)
    yolo = YOLO(str(w))
    yolo.train(trainer=PrunedDetectionTrainer, data=str(shapes_yaml), epochs=1, imgsz=64, batch=8, workers=0,
               plots=False, project=str(tmp_path), name="ft", device="cpu", amp=False, verbose=False)
    assert count_params(yolo.model) == n_params
    best = load_model(tmp_path / "ft" / "weights" / "best.pt")  # ultralytics' checkpoint, through the allowlist
    assert channel_table(best) == table and is_yaml_pruned(best.yaml)
    with pytest.raises(KeyError, match="PrunedDetectionTrainer"):
        YOLO(str(w)).train(data=str(shapes_yaml), epochs=1, imgsz=64, batch=8, workers=0, plots=False,
                           project=str(tmp_path), name="plain", device="cpu", amp=False)
    assert not (tmp_path / "plain" / "weights" / "last.pt").exists()


def _self_labelled_data(tmp_path, shapes_yaml, w):
    """The shapes val images labelled with the model's own most confident validation detections (jittered): a
    dataset on which an untrained model scores a mid-range mAP, so two validators are compared on real numbers."""
    import shutil

    import yaml

    import val

    _, pred_dir = val.run(weights=str(w), data=str(shapes_yaml), imgsz=64, workers=0, save_txt=True, save_conf=True,
                          project=str(tmp_path / "label_run"), no_progress=True)
    root = tmp_path / "selfdata"
    shutil.copytree(shapes_yaml.parent / "images" / "val", root / "images" / "val")
    (root / "labels" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in (pred_dir / "labels").glob("*.txt"):
        rows = np.loadtxt(f, ndmin=2)
        inside = (np.abs(rows[:, 1:3] - 0.5) + rows[:, 3:5] / 2).max(1) < 0.49  # clear of the image border
        rows = rows[inside][np.argsort(-rows[inside, 5])][:4, :5]  # class, xywh (normalised) of the 4 most confident
        rows[:, 1:3] += rows[:, 3:5] * rng.uniform(-0.1, 0.1, (len(rows), 2))  # shift by up to 10% of the size
        rows[:, 3:5] *= rng.uniform(0.85, 1.15, (len(rows), 2))
        rows[:, 1:] = np.clip(rows[:, 1:], 0.0, 1.0)
        np.savetxt(root / "labels" / "val" / f.name, rows, fmt=["%d"] + ["%.6f"] * 4)
    y = root / "data.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                 "names": {i: f"c{i}" for i in range(4)}}))
    return y


def test_val_reproduces_ultralytics_validator(shapes_yaml, tmp_path):
    """val.py on a pruned ultralytics checkpoint gives `YOLO(p).val()`'s numbers (same batch, IoU, conf)."""
    from ultralytics import YOLO

    import val

    w, _ = _pruned_checkpoint(tmp_path, scores_bias=0.0)
    data = _self_labelled_data(tmp_path, shapes_yaml, w)
    res, save_dir = val.run(weights=str(w), data=str(data), imgsz=64, workers=0, project=str(tmp_path / "val"),
                            no_progress=True)
    ref = YOLO(str(w)).val(data=str(data), imgsz=64, batch=16, plots=False, project=str(tmp_path), name="yval",
                           device="cpu", verbose=False).box
    assert res.convention == "ultralytics" and res.instances > 0
    assert 0.05 < res.map50_95 < 0.95  # a non-trivial number, or agreement would prove nothing
    ours = np.array([res.precision, res.recall, res.map50, res.map50_95])
    np.testing.assert_allclose(ours, [ref.mp, ref.mr, ref.map50, ref.map], atol=1e-4)
    import json

    assert json.loads((save_dir / "metrics.json").read_text())["convention"] == "ultralytics"


def test_predict_matches_toolkit_forward(shapes_yaml, tmp_path):
    """YOLO(pruned).predict() returns the boxes of the toolkit's model forward + NMS on ultralytics' letterbox."""
    import cv2
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    from models.loader import fuse_model

    w, _ = _pruned_checkpoint(tmp_path, scores_bias=0.0)
    model = fuse_model(load_model(w))
    images = sorted((shapes_yaml.parent / "images" / "val").iterdir())[:4]
    results = YOLO(str(w)).predict([str(p) for p in images], imgsz=64, conf=0.25, iou=0.7, verbose=False)
    n_boxes = 0
    for path, r in zip(images, results):
        im0 = cv2.imread(str(path))
        im = LetterBox((64, 64), auto=True, stride=32)(image=im0)
        x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).float()[None] / 255
        with torch.no_grad():
            det = non_max_suppression(model(x), 0.25, 0.7, max_det=300)[0]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape)
        assert det.shape == r.boxes.data.shape
        _close(r.boxes.data, det, 1e-4)
        n_boxes += len(det)
    assert n_boxes > 0


def test_end2end_head_scored_without_nms_as_ultralytics(shapes_yaml, tmp_path, capsys):
    """val.py --end2end on YOLO26 gives `YOLO(p).val(nms=False)`'s numbers (one-to-one head, no NMS); without it,
    `yolo val`'s default (one-to-many head + NMS). --end2end on a model without such a head warns."""
    from ultralytics import YOLO

    import val

    w, _ = _pruned_checkpoint(tmp_path, cfg="yolo26n.yaml", scores_bias=0.0)
    data = _self_labelled_data(tmp_path, shapes_yaml, w)
    kw = dict(data=str(data), imgsz=64, workers=0, no_progress=True, project=str(tmp_path / "val"))
    e2e, _ = val.run(weights=str(w), end2end=True, **kw)
    nms, _ = val.run(weights=str(w), **kw)
    for res, ultra in ((e2e, dict(nms=False)), (nms, {})):
        ref = YOLO(str(w)).val(data=str(data), imgsz=64, batch=16, plots=False, project=str(tmp_path), name="y",
                               device="cpu", verbose=False, **ultra).box
        # 5e-3 (the bar), not 1e-4 as for YOLOv8 above: this random head scores the letterbox padding
        # identically at many anchors, and such exact ties are ordered by 1e-7 noise that differs between runs
        np.testing.assert_allclose([res.precision, res.recall, res.map50, res.map50_95],
                                   [ref.mp, ref.mr, ref.map50, ref.map], atol=5e-3)
    assert e2e.map50_95 > 0.01 and (e2e.map50_95, e2e.precision) != (nms.map50_95, nms.precision)
    capsys.readouterr()
    w8, _ = _pruned_checkpoint(tmp_path, cfg="yolov8n.yaml")
    val.run(weights=str(w8), end2end=True, **kw)
    assert "--end2end: this model has no end-to-end" in capsys.readouterr().out


def test_saturated_nms_is_bounded_and_noted(shapes_yaml, tmp_path, monkeypatch):
    """A model whose every box passes conf: after the budget of saturated images the rest get no detections,
    deterministically (no wall-clock limit), and the result says so. Thresholds scaled down to 64-px images."""
    import engine.validation.common as uv
    import val

    monkeypatch.setattr(uv, "MAX_NMS", 50)
    monkeypatch.setattr(uv, "SATURATED_BUDGET", 3)
    w, _ = _pruned_checkpoint(tmp_path, scores_bias=3.0)  # sigmoid(3) = 0.95 for every class of every anchor
    res, save_dir = val.run(weights=str(w), data=str(shapes_yaml), imgsz=64, workers=0, no_progress=True,
                            project=str(tmp_path / "val"))
    assert len(res.notes) == 1 and "8 images had more than 50 boxes" in res.notes[0] and "5 got no detections" in res.notes[0]
    import json

    assert json.loads((save_dir / "metrics.json").read_text())["notes"] == res.notes
    guard = uv.SaturationGuard(0.001)
    pred = torch.full((2, 4 + 4, 100), 0.9)
    pred[1, 4:] = 0.0001  # a healthy image: nothing above conf
    for _ in range(3):
        guard(pred)
    assert guard.saturated == 3 and guard.skipped == 0  # budget 3 reached, nothing skipped yet
    guard(pred)
    assert guard.skipped == 1 and float(pred[0, 4:].max()) == 0.0 and float(pred[1, 4:].max()) > 0
