# AGPL-3.0 License
"""What a training run keeps on disk: checkpoints (storable models, plain options, stripped finished runs) and
results.csv."""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path

import numpy as np
import torch.nn as nn
from ultralytics.utils.torch_utils import unwrap_model

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.files import write_text

METRIC_KEYS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


def storable(model: nn.Module) -> nn.Module:
    """A float32 copy fit for the allowlisted loader (ultralytics keeps its args as a dict in checkpoints)."""
    m = copy.deepcopy(unwrap_model(model)).float()
    if hasattr(m, "args") and not isinstance(m.args, dict):
        m.args = dict(vars(m.args))
    if hasattr(m, "criterion"):
        m.criterion = None
    return m


def strip_checkpoint(path: Path) -> None:
    """Finished runs keep only the EMA model in FP16 (as YOLOv5 does): a small file for val/export/compress."""
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is None:
        return
    ckpt["model"] = (ckpt.get("ema") or ckpt["model"]).half()
    for k in ("ema", "optimizer", "scaler", "rng"):
        ckpt[k] = None
    ckpt["updates"] = None
    save_checkpoint(ckpt, path)


def plain(x):
    """Options/state reduced to plain Python values (the allowlisted loader refuses arbitrary classes)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x if not isinstance(x, str) else str(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)  # numpy scalars would pickle as numpy globals
    return str(x)


def as_random_state(s):
    """random.getstate() from its plain() form (lists back to the tuple random.setstate wants)."""
    return (s[0], tuple(s[1]), s[2])


def results_row(epoch: int, loss_names, mloss, res, lrs: list) -> dict:
    """One results.csv row: mean train losses `mloss` (one per name in `loss_names`), the validation `res`
    (engine.validation.ValResult, or None when the epoch was not validated: empty cells) and each group's lr."""
    row = {"epoch": epoch}
    row.update({f"train/{n}_loss": round(float(v), 5) for n, v in zip(loss_names, mloss)})
    vals = (res.precision, res.recall, res.map50, res.map50_95) if res is not None else ("",) * 4
    row.update({k: (round(v, 5) if v != "" else v) for k, v in zip(METRIC_KEYS, vals)})
    losses = res.losses if res is not None else {}
    row.update({f"val/{n}_loss": round(losses[n], 5) if n in losses else "" for n in loss_names})
    row.update({f"lr/pg{j}": round(float(lr), 6) for j, lr in enumerate(lrs)})
    return row


def write_csv(rows: list[dict], path: Path) -> None:
    """results.csv: one row per epoch, the union of the rows' columns (a run resumed from an older results.csv
    gains the newer columns)."""
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    """The rows of results.csv ([] when absent)."""
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))
