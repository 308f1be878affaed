# AGPL-3.0 License
"""The recovery recipe: fine-tuning defaults for a pruned model (docs/guides/recovery.md).

YOLOv5's train.py defaults (hyp.scratch-low: lr0 0.01, warmup of max(3 epochs, 100 iterations), nominal batch 64)
are made for training from scratch: a fine-tune of a few epochs on a small dataset runs entirely inside that warmup,
its learning rate rising every epoch. The recipe (cfg/default.yaml `recovery:` block: scratch-low's gains and
augmentation with a lower lr0, no warmup, a smaller nominal batch; docs/benchmarks/custom_data.md) replaces them:
`train.py --weights <pruned checkpoint>` uses it for every option the user did not give, and compress.py's
`compress:` block follows it.
"""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

import torch.nn as nn

import yaml

from models.loader import load_model
from models.yolo import Model
from prune.widths import unmarked_yaml
from utils.checkpoint import load_checkpoint
from utils.config import DEFAULT_CFG
from utils.general import LOGGER


def recipe() -> dict:
    """The recipe's options in train.py's names (cfg/default.yaml `recovery:` block), e.g. {'hyp': ..., 'nbs': 16}."""
    return dict(yaml.safe_load(DEFAULT_CFG.read_text()).get("recovery") or {})


def _narrower_than_yaml(model: nn.Module) -> bool:
    """True when some conv of `model` has fewer output channels than the same conv of a model built fresh from
    the model's own yaml (`model.yaml`, a dict for YOLOv5/YOLOv7 and ultralytics alike). Raises whatever the
    build raises (callers treat that as "not known to be pruned")."""
    cfg = unmarked_yaml(model.yaml)  # a pruned model's yaml is marked to refuse rebuilds (prune.widths)
    if "anchors" in cfg:
        fresh = Model(cfg, nc=int(model.nc))
    else:
        from ultralytics.nn.tasks import DetectionModel

        fresh = DetectionModel(cfg, nc=int(model.nc), verbose=False)
    widths = {n: m.out_channels for n, m in fresh.named_modules() if isinstance(m, nn.Conv2d)}
    return any(isinstance(m, nn.Conv2d) and n in widths and m.out_channels < widths[n]
               for n, m in model.named_modules())


def pruned_reason(weights: str | Path, trust: bool = False) -> str | None:
    """Why `weights` (a checkpoint path) counts as a pruned model, or None: compress.py's "pruning" record in the
    checkpoint, else convs narrower than the model's own yaml (a pruned model fine-tuned since, or pruned by another
    tool). Unreadable or unusual checkpoints give None here; loading them for training reports the problem."""
    path = Path(weights)
    if path.suffix in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path, trust=trust)
        if isinstance(ckpt, dict) and ckpt.get("pruning"):
            return f"compress.py's pruning record ({ckpt['pruning'].get('method', '?')})"
        model = load_model(path, trust=trust)
        if isinstance(getattr(model, "yaml", None), dict) and _narrower_than_yaml(model):
            return "its convs are narrower than its yaml's"
    except Exception:  # only a default is at stake: the training run itself reports a bad checkpoint
        return None
    return None


def apply_recipe(opt: Namespace, given: set[str]) -> dict:
    """train.py: when --weights is a pruned checkpoint, set the recipe's options the user did not give
    (`given`: the option names typed on the command line) and log one line saying so. Not applied to --resume
    (the run keeps its own options) nor to --pruning-params (seed 002's protocol prunes at load as the reference
    does). Returns the options changed ({} when none)."""
    if opt.resume or getattr(opt, "pruning_params", None) is not None or not opt.weights:
        return {}
    why = pruned_reason(opt.weights, trust=getattr(opt, "trust_checkpoint", False))
    if why is None:
        return {}
    changed = {k: v for k, v in recipe().items() if k not in given and getattr(opt, k, None) != v}
    for k, v in changed.items():
        setattr(opt, k, v)
    if os.environ.get("RANK", "-1") in ("-1", "0"):  # once under DDP
        kept = [f"--{k.replace('_', '-')}" for k in recipe() if k in given]
        LOGGER.info(f"recovery recipe: {opt.weights} is a pruned model ({why}): fine-tuning with "
                    + (", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items()) or "nothing changed")
                    + (f" ({', '.join(kept)} as given)" if kept else "")
                    + " (docs/guides/recovery.md; give --hyp/--nbs to choose your own)")
    return changed
