# AGPL-3.0 License
"""train.py: fine-tuning keeps pruned structures, checkpoints load safely, resume, sparsity, distillation, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

FAST = dict(imgsz=64, batch_size=8, workers=0, progress=False, hyp="scratch-low")


def _pruned_yolov5n(nc: int = 4, ratio: float = 0.3):
    from models.loader import load_model
    from prune import build_groups
    from prune.importance import get_criterion
    from prune.surgery import apply_removal, channel_table
    from prune.plans import plan_uniform

    model = load_model("yolov5n.yaml", nc=nc)
    groups = build_groups(model, imgsz=64)
    crit = get_criterion("l1")
    removed = plan_uniform(groups, scores={g.id: crit(model, g) for g in groups.prunable}, ratio=ratio)
    apply_removal(model, groups, removed)
    return model, channel_table(model)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from utils.checkpoint import save_checkpoint

    model, table = _pruned_yolov5n()
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint({"model": model.half(), "epoch": -1}, path)
    return path, table


def test_finetune_pruned_keeps_structure_and_loads(pruned, shapes_yaml, tmp_path):
    from engine.trainer import train
    from models.loader import load_model
    from prune.surgery import channel_table
    from utils.checkpoint import load_checkpoint

    path, table = pruned
    res = train(weights=str(path), data=str(shapes_yaml), epochs=1, save_dir=str(tmp_path / "run"), **FAST)
    assert res.best is not None and res.best.exists() and (tmp_path / "run" / "results.csv").exists()
    loaded = load_model(res.best)
    assert channel_table(loaded) == table  # the trainer never rebuilt or resized the model
    ckpt = load_checkpoint(res.best)  # allowlisted loader: nothing unusual pickled
    assert ckpt["optimizer"] is None and ckpt["model"].model[0].conv.weight.dtype == torch.float16  # stripped
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "metrics/mAP_0.5:0.95" in rows[0]
    # weights changed: it trained
    before = load_model(path).model[0].conv.weight.float()
    assert not torch.allclose(before, loaded.model[0].conv.weight.float())
    # input weights are never modified
    assert torch.equal(load_model(path).model[0].conv.weight, before)


def test_val_py_loads_finetuned_pruned(pruned, shapes_yaml, tmp_path):
    import val
    from engine.trainer import train

    res = train(weights=str(pruned[0]), data=str(shapes_yaml), epochs=1, save_dir=str(tmp_path / "r"), **FAST)
    out, _ = val.run(weights=str(res.best), data=str(shapes_yaml), imgsz=64, batch_size=8, workers=0,
                     project=str(tmp_path / "val"))
    assert out.images == 8


def test_resume_after_crash_mid_epoch(shapes_yaml, tmp_path):
    """A crash in the second epoch (after some optimizer steps) loses nothing: --resume finishes the run."""
    from engine.trainer import train
    from utils.checkpoint import load_checkpoint

    class Crash(RuntimeError):
        pass

    def crash(trainer):
        if trainer.epoch == 1:
            raise Crash()

    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(cfg="yolov5n.yaml", data=str(shapes_yaml), epochs=3, save_dir=str(run),
              callbacks={"on_optimizer_step": [crash]}, **FAST)
    last = run / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    res = train(resume=str(last), **{k: v for k, v in FAST.items() if k in ("workers", "progress")})
    assert res.save_dir == run and res.epochs == 2
    rows = (run / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert load_checkpoint(last)["epoch"] == 2
    with pytest.raises(Exception, match="no training state"):  # a finished (stripped) run cannot be resumed
        train(resume=str(last), workers=0, progress=False)


def test_sparsity_penalty_pushes_gammas_down(shapes_yaml, tmp_path):
    from engine.trainer import train
    from prune.methods.slim import SparsityPenalty
    from utils.general import UsageError

    model, _ = _pruned_yolov5n()
    bn = model.model[0].bn
    bn.weight.grad = torch.zeros_like(bn.weight)
    pen = SparsityPenalty(model, 1e-3, ignore=["model.1.*"], images_per_step=128, nbs=64)
    pen.apply()
    assert torch.allclose(bn.weight.grad, 2e-3 * torch.sign(bn.weight.detach()))
    assert not any(n.startswith("model.1.") for n, _ in pen.bns)
    assert SparsityPenalty(model, 1e-3, ignore=["model.1"]).ignored == ["model.1.bn"]  # a module covers its own
    with pytest.raises(UsageError, match="--sparsity-ignore 'model.1.bnn' matches no BatchNorm layer"):
        SparsityPenalty(model, 1e-3, ignore=["model.1.bnn"])

    kw = dict(cfg="yolov5n.yaml", data=str(shapes_yaml), epochs=1, seed=0, **FAST)
    plain = train(save_dir=str(tmp_path / "plain"), **kw)
    sparse = train(save_dir=str(tmp_path / "sparse"), sparsity=0.05, **kw)
    g = [sum(float(m.weight.abs().sum()) for m in r.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
         for r in (plain, sparse)]
    assert g[1] < g[0]
    assert (tmp_path / "sparse" / "gamma_hist.png").stat().st_size > 0


def test_distillation_loss_and_teacher_frozen(pruned):
    from engine.distill import OutputDistiller
    from models.loader import load_model

    teacher = load_model("yolov5n.yaml", nc=4)
    student = load_model(pruned[0]).train()
    d = OutputDistiller(teacher, student, {"box": 0.05, "obj": 1.0, "cls": 0.5}, weight=1.0)
    img = torch.rand(2, 3, 64, 64)
    loss = d(student(img), img)
    assert loss.item() > 0
    loss.backward()
    assert student.model[0].conv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    same = OutputDistiller(teacher, teacher)
    t_raw = same.teacher_outputs(img)
    assert same([t.clone() for t in t_raw], img).item() == 0.0


def test_train_with_teacher_and_ultralytics_model(shapes_yaml, tmp_path, pruned):
    from engine.trainer import train
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    teacher = tmp_path / "teacher.pt"
    save_checkpoint({"model": load_model("yolov5n.yaml", nc=4).half()}, teacher)
    res = train(weights=str(pruned[0]), teacher=str(teacher), data=str(shapes_yaml), epochs=1,
                save_dir=str(tmp_path / "kd"), **FAST)
    assert res.best.exists()
    res = train(cfg="yolov8n.yaml", data=str(shapes_yaml), epochs=1, save_dir=str(tmp_path / "v8"), **FAST)
    m = load_model(res.best)
    assert m.nc == 4 and isinstance(m.args, dict)


def test_new_dataset_gets_new_class_head(shapes_yaml, tmp_path):
    """An 80-class checkpoint fine-tuned on 4-class data: only the class outputs change."""
    from engine.trainer import train
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    src = load_model("yolov5n.yaml", nc=80)
    path = tmp_path / "coco.pt"
    save_checkpoint({"model": src}, path)
    res = train(weights=str(path), data=str(shapes_yaml), epochs=1, save_dir=str(tmp_path / "r"), **FAST)
    m = load_model(res.best)
    assert m.nc == 4 and m.model[-1].m[0].out_channels == 3 * 9


@pytest.mark.parametrize("argv,msg", [
    (["--cfg", "yolov5n.yaml", "--epochs", "-1"], "--epochs must be >= 0"),
    (["--cfg", "yolov5n.yaml", "--hyp", "nope"], "--hyp 'nope' not found"),
    (["--cfg", "yolov5n.yaml", "--device", "7"], "--device 7 requested"),
    ([], "give --weights"),
    (["--cfg", "yolov5n.yaml", "--sparsity", "1e-4", "--sparsity-ignore", "model.99"],
     "--sparsity-ignore 'model.99' matches no BatchNorm layer"),
    (["--cfg", "yolov5n.yaml", "--sparsity-ignore", "model.1"], "--sparsity-ignore only applies to sparsity training"),
])
def test_bad_flags_one_line_error(argv, msg, shapes_yaml, tmp_path, capsys):
    import train as train_cli

    rc = train_cli.main([*argv, "--data", str(shapes_yaml), "--project", str(tmp_path), "--img", "64"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*/weights"))


def test_ddp_gloo_two_cpu_processes(shapes_yaml, tmp_path):
    """The distributed path: torchrun, gloo, 2 CPU processes, one run folder, a loadable checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           "--cfg", "yolov5n.yaml", "--data", str(shapes_yaml), "--epochs", "1", "--img", "64", "--batch", "8",
           "--device", "cpu", "--workers", "0", "--project", str(tmp_path), "--name", "ddp"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ddp"]  # both ranks used rank 0's folder
    from models.loader import load_model

    assert load_model(Path(tmp_path / "ddp" / "weights" / "last.pt")).nc == 4
