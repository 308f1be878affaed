# AGPL-3.0 License
"""compress.py's round with gradual pruning inside the fine-tune (the cuts: prune/gradual.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch.nn as nn

from engine.trainer import train
from models.loader import load_model
from prune.gradual import GradualPruner
from utils import distributed as ddp
from utils.checkpoint import load_checkpoint
from utils.files import write_json


def finetune(k: int, model: nn.Module, opt, run, rdir: Path, target: float, train_kwargs: dict,
             measure: Callable[[nn.Module, str], dict]) -> tuple[nn.Module, dict]:
    """compress.py's round k with gradual pruning: fine-tune `model` (the round's input) while cutting it to
    `target`, or continue that fine-tune after an interruption (--resume). run: the compressor's data, device,
    evaluate and teacher; train_kwargs: the fine-tune's train() options; measure(model, tag): validation (rank 0).
    Returns the fine-tuned pruned model and the round's pruning record (gradual.json in rdir)."""
    record, last, best = rdir / "gradual.json", rdir / "weights" / "last.pt", rdir / "weights" / "best.pt"
    if opt.resume and record.exists() and best.exists():  # finished before an interruption
        return load_model(best).to(run.device), json.loads(record.read_text())
    pruner = GradualPruner(opt, run.data, run.device, rdir, target,
                           measure=lambda m: measure(m, f"round {k} after the last gradual cut"))
    resume = bool(opt.resume) and last.exists() and has_train_state(last)
    kw = {} if resume else dict(train_kwargs, save_dir=str(rdir))
    res = train(model=None if resume else model, resume=str(last) if resume else False, teacher_model=run.teacher,
                callbacks=pruner.callbacks(), **kw)
    model = (res.model if res.model is not None else model).to(run.device)
    info = pruner.info()
    if info["pruned_metrics"] is None:  # another DDP process, or no cut happened
        info["pruned_metrics"] = {key: None for key in ("params", "gflops", "map50", "map50_95", "precision", "recall")}
    if ddp.is_main():
        write_json(info, record)
    return model, info


def has_train_state(path: Path) -> bool:
    """True when the checkpoint at `path` can be resumed (it holds an optimizer state)."""
    try:
        return load_checkpoint(path).get("optimizer") is not None
    except Exception:  # an unreadable last.pt: fine-tune again
        return False
