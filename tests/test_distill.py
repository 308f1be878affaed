# AGPL-3.0 License
"""Distillation from the input model: output and feature losses, projectors, plain checkpoints, compress.py's
default, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import compress
import train as train_cli
from engine.distill import Distiller
from engine.trainer import train
from models.loader import load_model
from prune import build_groups
from prune.importance import get_criterion
from prune.plans import plan_uniform
from prune.surgery import apply_removal
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.general import UsageError

FAST = dict(imgsz=64, batch_size=8, workers=0, progress=False, hyp="scratch-low")
FAMILIES = ["yolov5n.yaml", "yolov8n.yaml"]


def _pruned(model, ratio: float = 0.5):
    model = copy.deepcopy(model)
    groups = build_groups(model, imgsz=64)
    crit = get_criterion("l1")
    removed = plan_uniform(groups, scores={g.id: crit(model, g) for g in groups.prunable}, ratio=ratio)
    apply_removal(model, groups, removed)
    return model


@pytest.fixture(scope="module", params=[("yolov5s.yaml", "yolov5n.yaml"), ("yolov8s.yaml", "yolov8n.yaml")])
def pair(request):
    """A teacher (random weights, perturbed so that its outputs depend on its features) and a narrower student of
    its family, as a pruned one is (the slow tests below prune for real)."""
    torch.manual_seed(0)
    teacher = load_model(request.param[0], nc=4).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return teacher, load_model(request.param[1], nc=4)


def test_loss_zero_for_the_teacher_itself_positive_for_a_narrower_student(pair):
    teacher, student = pair
    img = torch.rand(2, 3, 64, 64)
    same = copy.deepcopy(teacher).eval()  # eval: the BN statistics of both are the running ones
    student = copy.deepcopy(student).eval()
    apart = {}
    for mode in ("output", "feature"):
        d = Distiller(teacher, student, mode, imgsz=64)
        apart[mode] = d(d.student_forward(student, img), img).item()
        assert apart[mode] > 1e-3, (mode, apart)
    d = Distiller(teacher, same, "both", imgsz=64)
    itself = d(d.student_forward(same, img), img).item()
    # ultralytics' projector (conv, ReLU, conv; identity convs here) drops the features' negative part
    assert 0 <= itself < 1e-5 * min(apart.values()), (itself, apart)


def test_gradients_reach_projectors_not_teacher_and_no_hooks_stay(pair):
    teacher, student = pair
    student = copy.deepcopy(student).train()
    t = copy.deepcopy(teacher)
    d = Distiller(t, student, "both", imgsz=64)
    assert d.parameters() and d.parameters()[0].shape[1] < d.parameters()[0].shape[0]  # student -> teacher widths
    img = torch.rand(2, 3, 64, 64)
    d(d.student_forward(student, img), img).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
    assert student.model[0].conv.weight.grad is not None
    assert all(p.grad is None for p in t.parameters()) and not t.training
    assert not any(m._forward_hooks for m in student.modules())  # nothing left on the student between batches
    copy.deepcopy(student)  # as the EMA and the checkpoints do


def test_projectors_follow_a_student_narrowed_during_the_fine_tune(pair):
    """Pruning in steps narrows the student mid-run: the projector inputs and the optimizer group follow."""
    teacher, narrow = pair
    wide = copy.deepcopy(teacher).train()
    d = Distiller(teacher, wide, "feature", imgsz=64)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    d.add_param_group(opt, {})
    before = [p.shape for p in d.parameters()]
    narrow = copy.deepcopy(narrow).train()
    img = torch.rand(2, 3, 64, 64)
    d(d.student_forward(narrow, img), img).backward()
    assert [p.shape for p in d.parameters()] != before
    assert [p.shape for p in opt.param_groups[-1]["params"]] == [p.shape for p in d.parameters()]
    opt.step()  # the new projector inputs train


@pytest.mark.slow
@pytest.mark.parametrize("cfg", FAMILIES)
def test_training_with_feature_kd_saves_plain_models(cfg, shapes_yaml, tmp_path):
    torch.manual_seed(0)
    teacher = load_model(cfg, nc=4)
    student = _pruned(teacher)
    s_path, t_path = tmp_path / "student.pt", tmp_path / "teacher.pt"
    save_checkpoint({"model": copy.deepcopy(student).half(), "epoch": -1}, s_path)
    save_checkpoint({"model": copy.deepcopy(teacher).half()}, t_path)
    res = train(weights=str(s_path), teacher=str(t_path), distill_mode="both", data=str(shapes_yaml), epochs=1,
                save_dir=str(tmp_path / "kd"), **FAST)
    keys = set(student.state_dict())
    for f in (res.best, res.last):
        ckpt = load_checkpoint(f)  # the allowlisted loader: no distillation class pickled
        for k in ("model", "ema"):
            if ckpt.get(k) is not None:
                assert set(ckpt[k].state_dict()) == keys
                assert not any(m._forward_hooks for m in ckpt[k].modules())
        assert not any("projector" in k or "teacher" in k for k in ckpt)
        m = load_model(f)
        assert set(m.state_dict()) == keys
    summary = json.loads((tmp_path / "kd" / "distill.json").read_text())
    assert summary == res.distill and summary["mode"] == "both" and summary["projector_params"] > 0
    assert 0 < summary["distill_seconds_per_epoch"] < summary["epoch_seconds"]


def _compress(args, tmp_path):
    return compress.main(["--weights", "yolov5n.yaml", "--img", "64", "--batch", "8", "--method", "l1", "--ratio",
                          "0.3", "--no-latency", "--workers", "0", "--hyp", "scratch-low",
                          "--project", str(tmp_path / "runs")] + args)


@pytest.mark.slow
def test_compress_distils_with_distill_and_not_with_no_distill(shapes_yaml, tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert _compress(["--data", str(shapes_yaml), "--epochs", "1", "--name", "on", "--distill"], tmp_path) == 0
    text = caplog.text
    assert "distilling (both) from the unpruned model" in text and "distillation (both):" in text
    s = json.loads((tmp_path / "runs" / "on" / "summary.json").read_text())
    assert s["rounds"][0]["distill"]["mode"] == "both"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _compress(["--data", str(shapes_yaml), "--epochs", "1", "--name", "off", "--no-distill"],
                         tmp_path) == 0
    assert "distilling" not in caplog.text and "distillation (" not in caplog.text
    s = json.loads((tmp_path / "runs" / "off" / "summary.json").read_text())
    assert s["rounds"][0]["distill"] is None


def test_distill_flag_turns_it_on_and_conflict_is_one_line(caplog, capsys):
    assert not compress.parse_opt(["--weights", "yolov5n.yaml"]).distill  # off by default (cfg compress: distill)
    assert compress.parse_opt(["--weights", "yolov5n.yaml", "--distill"]).distill
    with pytest.raises(UsageError, match="contradict"):
        compress.parse_opt(["--weights", "yolov5n.yaml", "--distill", "--no-distill"])


def test_teacher_of_another_family_classes_or_levels_is_one_line(shapes_yaml, tmp_path, capsys):
    student, teacher = tmp_path / "s.pt", tmp_path / "t.pt"
    save_checkpoint({"model": load_model("yolov5n.yaml", nc=4).half()}, student)
    save_checkpoint({"model": load_model("yolov8n.yaml", nc=4).half()}, teacher)
    rc = train_cli.main(["--weights", str(student), "--teacher", str(teacher), "--data", str(shapes_yaml),
                         "--epochs", "1", "--img", "64", "--workers", "0", "--project", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "anchor-based vs anchor-free" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()  # refused before the run folder
    v8 = load_model("yolov8n.yaml", nc=4)
    for other, message in ((load_model("yolov8n.yaml", nc=3), "predicts 3 classes, the student 4"),
                           (load_model("yolov8n-p2.yaml", nc=4), "feature levels")):
        with pytest.raises(UsageError, match=message) as e:
            Distiller(other, v8, "feature", imgsz=64)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="--distill-mode"):
        Distiller(v8, v8, "features", imgsz=64)
