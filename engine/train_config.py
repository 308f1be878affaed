# AGPL-3.0 License
"""A training run's options: train.py's defaults (cfg/default.yaml), their checks, the hyp file, and --resume."""

from __future__ import annotations

import os
import random
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import yaml

from data.datasets import DATA_DIR
from engine.backends import refuse_exported
from engine.distill import DistillMode
from engine.optim import OPTIMIZERS, SCHEDULES, STEP_DECAYS
from utils.checkpoint import load_checkpoint, training_lr0
from utils.config import check_choice, defaults
from utils.general import UsageError


def load_hyp(hyp: str | Path | dict | None) -> dict:
    """A hyp yaml path, a name in data/hyps ('finetune', 'scratch-low', 'hyp.finetune.yaml'), or a dict."""
    if isinstance(hyp, dict):
        return dict(hyp)
    name = str(hyp or defaults("train")["hyp"])
    for p in (Path(name), DATA_DIR.parent / name, DATA_DIR / "hyps" / name, DATA_DIR / "hyps" / f"hyp.{name}.yaml",
              DATA_DIR / "hyps" / f"{name}.yaml", DATA_DIR / "hyps" / Path(name).name):  # YOLOv7's data/hyp.*.yaml
        if p.is_file():
            h = yaml.safe_load(p.read_text()) or {}
            if not isinstance(h, dict):
                raise UsageError(f"hyp file {p} must be a mapping of hyperparameters")
            return h
    raise UsageError(f"--hyp '{name}' not found; give a yaml path or one of "
                     f"{', '.join(sorted(p.stem.removeprefix('hyp.') for p in (DATA_DIR / 'hyps').glob('*.yaml')))}")


def train_options(**kw) -> Namespace:
    """train.py's options from cfg/default.yaml, overridden by keyword arguments (the Python API)."""
    d = defaults("train")
    d.update(weights="", cfg="", resume=False, nosave=False, single_cls=False, name="exp", exist_ok=False,
             save_dir=None, local_rank=-1, progress=True, trust_checkpoint=False)
    unknown = set(kw) - set(d)
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    d.update(kw)
    return Namespace(**d)


def check_options(opt: Namespace) -> None:
    if getattr(opt, "weights", None):
        refuse_exported(opt.weights, "train.py")  # training needs the PyTorch model
    if opt.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {opt.epochs}")
    if opt.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opt.batch_size}")
    if opt.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown --optimizer '{opt.optimizer}': choose "
                         f"{', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]}")
    check_choice(opt.distill_mode, DistillMode, "--distill-mode")
    if opt.dist < 0 or opt.dist_feat < 0:
        raise UsageError(f"--dist and --dist-feat must be >= 0, got {opt.dist} and {opt.dist_feat}")
    if opt.sparsity < 0:
        raise UsageError(f"--sparsity must be >= 0, got {opt.sparsity}")
    if opt.sparsity_ignore and not opt.sparsity:
        raise UsageError("--sparsity-ignore only applies to sparsity training: add --sparsity S (e.g. 6e-4)")
    if opt.schedule not in SCHEDULES or opt.step_decay not in STEP_DECAYS:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)} and step_decay one of {', '.join(STEP_DECAYS)}, "
                         f"got {opt.schedule} / {opt.step_decay}")
    if not (0 <= opt.warmup_share < 1 and 0 < opt.ema_tau_share <= 1 and 0 < opt.ema_window_share <= 1
            and opt.lr_factor > 0 and opt.warmup_steps >= 0):
        raise UsageError("step schedule: need lr_factor > 0, warmup_steps >= 0, warmup_share in [0, 1) and "
                         "ema_tau_share, ema_window_share in (0, 1]")
    if not opt.weights and not opt.cfg:
        raise UsageError("give --weights (a checkpoint to fine-tune) or --cfg (a model yaml to train from scratch)")


def resolve_base_lr0(opt: Namespace) -> float | None:
    """The base model's own training lr0 for `schedule: steps`: --base-lr0, else read from --weights (None when
    unknown: the hyp's lr0 is then used as it is)."""
    if opt.base_lr0 is not None or not Path(str(opt.weights)).is_file():
        return opt.base_lr0
    try:
        return training_lr0(load_checkpoint(opt.weights, trust=opt.trust_checkpoint))
    except Exception:  # only a default is at stake
        return None


def find_last(project: str | Path) -> Path:
    runs = sorted(Path(project).rglob("last.pt"), key=os.path.getmtime)
    if not runs:
        raise UsageError(f"--resume: no last.pt under {project}; pass --resume path/to/last.pt")
    return runs[-1]


def resume_options(opt: Namespace) -> tuple[Namespace, dict]:
    """--resume [last.pt]: the interrupted run's options and state (epochs, data, hyp, ... as first given)."""
    last = Path(opt.resume) if isinstance(opt.resume, (str, Path)) and str(opt.resume) not in ("", "True") \
        else find_last(opt.project)
    if not last.is_file():
        raise UsageError(f"--resume {last}: no such checkpoint")
    ckpt = load_checkpoint(last, trust=opt.trust_checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("optimizer") is None or "opt" not in ckpt:
        raise UsageError(f"--resume {last}: this checkpoint has no training state (a finished or stripped run); "
                         "start a new run with --weights instead")
    saved = Namespace(**{**vars(train_options()), **ckpt["opt"]})
    saved.resume, saved.save_dir = str(last), str(last.parent.parent)
    saved.device, saved.workers = opt.device, opt.workers  # the machine may differ
    return saved, ckpt


def seed_everything(seed: int) -> None:
    """Seed every random source a training run draws from in this process: Python's random, NumPy and torch (CPU
    and CUDA), and make cuDNN pick deterministic kernels. Dataloader workers (shuffling, augmentation) are seeded
    from the loader's generator, which ultralytics seeds from torch's seed. The same command then gives the same
    weights on the same machine; what still varies across machines: the number of workers ultralytics starts (it
    caps them by the CPU count), thread counts and kernels (CPU, GPU model, library versions)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # benchmark mode picks kernels by timing: not reproducible
    torch.backends.cudnn.deterministic = True
