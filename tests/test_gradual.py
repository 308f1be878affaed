# AGPL-3.0 License
"""Gradual pruning inside the fine-tune (engine/gradual.py) and the schedule in optimizer steps (engine/optim.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import compress
import train
from engine.optim import StepSchedule
from engine.report import FLOPS_TOLERANCE
from models.loader import load_model
from prune.gradual import cut_steps
from utils.config import defaults
from utils.general import UsageError

FAST = ["--weights", "yolov5n.yaml", "--img", "64", "--batch", "4", "--nbs", "4", "--no-latency", "--workers", "0",
        "--gradual"]


def _compress(args, project, shapes_yaml):
    return compress.main(FAST + ["--data", str(shapes_yaml), "--project", str(project)] + args)


def _channels(run):
    return json.loads((run / "channels.json").read_text())


def test_cut_steps_spread_and_refused_when_too_long():
    assert cut_steps(100, 10, 0.4) == list(range(4, 41, 4))
    steps = cut_steps(7, 3, 0.5)  # 3 cuts in the first 3 steps: one each, in order
    assert steps == sorted(set(steps)) and len(steps) == 3 and steps[-1] <= 4
    with pytest.raises(UsageError, match="gradual pruning needs 11 optimizer steps"):
        cut_steps(25, 11, 0.4)


def test_step_schedule_scales_with_the_run():
    opt = SimpleNamespace(**{k: defaults("train")[k] for k in ("lr_factor", "warmup_steps", "warmup_share",
                                                               "step_decay", "ema_tau_share", "ema_window_share")})
    hyp = {"lr0": 0.001, "lrf": 0.01}
    short, long = StepSchedule.create(300, hyp, opt, base_lr0=0.01), StepSchedule.create(30_000, hyp, opt, 0.01)
    assert short.lr0 == long.lr0 == pytest.approx(0.01 * opt.lr_factor)  # relative to the base's own lr0
    assert StepSchedule.create(300, hyp, opt).lr0 == 0.001  # unknown base lr0: the hyp's
    assert short.warmup == round(opt.warmup_share * 300) < long.warmup == opt.warmup_steps
    assert short.ema_tau / 300 == pytest.approx(long.ema_tau / 30_000)  # EMA meaningful at both lengths
    assert 1 / (1 - short.ema_decay) == pytest.approx(opt.ema_window_share * 300)
    assert 1 / (1 - long.ema_decay) == pytest.approx(opt.ema_window_share * 30_000)
    for s in (short, long):
        f = [s.factor(i) for i in range(s.total)]
        assert f[0] < f[s.warmup] == pytest.approx(1.0) and f[-1] == pytest.approx(hyp["lrf"])
        assert all(a >= b for a, b in zip(f[s.warmup:], f[s.warmup + 1:]))  # decays after the warmup
        assert f"{s.total} steps, warmup {s.warmup}" in s.line() and "EMA tau" in s.line()


def test_gradual_reaches_target_in_n_cuts_at_their_steps(shapes_yaml, tmp_path, capsys):
    args = ["--method", "l1", "--target-flops", "0.5", "--epochs", "2", "--gradual-steps", "3",
            "--gradual-until", "0.5", "--seed", "1"]
    assert _compress(args, tmp_path, shapes_yaml) == 0
    run = tmp_path / "exp"
    s = json.loads((run / "summary.json").read_text())
    assert abs(s["flops_share"] - 0.5) <= FLOPS_TOLERANCE
    record = json.loads((run / "round_0" / "gradual.json").read_text())
    total = 2 * 4  # epochs x batches of 4 among 16 images, one optimizer step each
    cuts = record["gradual"]["cuts"]
    assert [c["step"] for c in cuts] == cut_steps(total, 3, 0.5)
    shares = [c["share"] for c in cuts]
    assert shares == sorted(shares, reverse=True) and shares[0] < 1 and abs(shares[-1] - 0.5) <= FLOPS_TOLERANCE
    model = load_model(run / "pruned.pt")
    assert sum(p.numel() for p in model.parameters()) == s["after"]["params"] < s["before"]["params"]
    out = capsys.readouterr()
    assert "schedule in optimizer steps: 8 steps" in out.out + out.err
    assert "pricing took" in out.out + out.err


def test_one_shot_flag_keeps_the_single_cut(shapes_yaml, tmp_path):
    args = ["--method", "l1", "--target-flops", "0.6", "--seed", "1"]
    assert _compress(args + ["--epochs", "0"], tmp_path / "a", shapes_yaml) == 0
    assert _compress(args + ["--epochs", "1", "--one-shot"], tmp_path / "b", shapes_yaml) == 0
    one = tmp_path / "b" / "exp" / "round_0"
    assert (one / "pruned.json").exists() and not (one / "gradual.json").exists()
    pruned = load_model(one / "pruned.pt")
    ref = load_model(tmp_path / "a" / "exp" / "pruned.pt")
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in ref.parameters()]
    # train.py on a pruned checkpoint: the recovery recipe's schedule in optimizer steps
    assert train.parse_opt(["--weights", str(one / "pruned.pt"), "--data", str(shapes_yaml)]).schedule == "steps"


@pytest.mark.slow
def test_resume_mid_schedule_same_structure(shapes_yaml, tmp_path, monkeypatch, capsys):
    import engine.trainer

    args = ["--method", "l1", "--target-flops", "0.5", "--epochs", "2", "--gradual-steps", "3",
            "--gradual-until", "0.9", "--seed", "2"]  # cuts after steps 2, 5 and 7 of 8: both epochs
    assert _compress(args, tmp_path / "a", shapes_yaml) == 0
    real = engine.trainer.Trainer._run_callbacks

    def crash(self, event):
        if event == "on_fit_epoch_end" and self.epoch == 0:
            raise KeyboardInterrupt()
        return real(self, event)

    monkeypatch.setattr(engine.trainer.Trainer, "_run_callbacks", crash)
    assert _compress(args, tmp_path / "b", shapes_yaml) == 130
    monkeypatch.setattr(engine.trainer.Trainer, "_run_callbacks", real)
    run = tmp_path / "b" / "exp"
    capsys.readouterr()
    rc = _compress(args + ["--resume", str(run), "--gradual-steps", "4"], tmp_path / "b", shapes_yaml)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "a resume cannot change the pruning schedule" in err and len(err.splitlines()) == 1
    assert _compress(args + ["--resume", str(run)], tmp_path / "b", shapes_yaml) == 0
    assert _channels(run) == _channels(tmp_path / "a" / "exp")
    cuts = json.loads((run / "round_0" / "gradual.json").read_text())["gradual"]["cuts"]
    assert [c["cut"] for c in cuts] == [1, 2, 3]  # the cuts before the interruption kept, the last one after


def test_schedule_longer_than_the_finetune_is_refused(shapes_yaml, tmp_path, capsys):
    rc = _compress(["--method", "l1", "--target-flops", "0.5", "--epochs", "1", "--gradual-steps", "20"], tmp_path,
                   shapes_yaml)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "gradual pruning needs 20 optimizer steps" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_gradual_pagcp_reaches_target(shapes_yaml, tmp_path):
    args = ["--method", "pagcp", "--target-flops", "0.7", "--epochs", "1", "--gradual-steps", "2",
            "--gradual-until", "0.5", "--gradual-calib-images", "4", "--calib-images", "4"]
    assert _compress(args, tmp_path, shapes_yaml) == 0
    s = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert abs(s["flops_share"] - 0.7) <= FLOPS_TOLERANCE and len(s["rounds"][0]["gradual"]["cuts"]) == 2


@pytest.mark.slow
def test_ddp_gradual_two_processes_cut_alike(shapes_yaml, tmp_path):
    """torchrun, 2 gloo processes: every cut is applied on both (rank 0's plan), training goes on as DDP."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    project = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "compress.py"), "--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64",
           "--batch", "8", "--nbs", "8", "--method", "l1", "--target-flops", "0.5", "--epochs", "2",
           "--gradual", "--gradual-steps", "2", "--gradual-until", "0.5", "--device", "cpu", "--no-latency",
           "--workers", "0",
           "--project", str(project)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((project / "exp" / "summary.json").read_text())
    assert "2 process(es)" in p.stdout and abs(s["flops_share"] - 0.5) <= FLOPS_TOLERANCE
    assert len(s["rounds"][0]["gradual"]["cuts"]) == 2
    assert sum(t.numel() for t in load_model(project / "exp" / "pruned.pt").parameters()) == s["after"]["params"]
