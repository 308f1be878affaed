# AGPL-3.0 License
"""The offline demo's base training (`python compress.py` without --weights) is reproducible: the same seed in two
separate processes (no random state carried between them) that see different CPU counts gives bit-identical weights
and the same metrics.

Dataloader workers each draw their own augmentation stream and their number follows the CPU count, so the demo's
base trains in the main process (--base-workers 0); with workers (any count the CPU count caps) two machines trained
different bases. cuDNN's deterministic mode matters on CUDA only and is not exercised here."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

# the demo's own path: compress.py's options (demo profile, then these flags) -> ensure_base_model, as
# engine.compressor.run calls it when --weights is not given; workers stay at the demo's default
SCRIPT = """
import os
import sys
if os.environ.get("TEST_CPU_COUNT"):  # a machine with this many cores
    os.cpu_count = lambda: int(os.environ["TEST_CPU_COUNT"])
import compress
from data.datasets import check_dataset
from engine.demo import ensure_base_model

opt = compress.parse_opt(sys.argv[1:])
print(ensure_base_model(opt, check_dataset(opt.data, splits=("train", "val"))))
"""


def _train_base(data: Path, cache: Path, cpus: int) -> tuple[Path, Path]:
    """One base training in a fresh process that sees `cpus` cores, with its own cache (nothing reused); returns
    (checkpoint, run folder)."""
    cache.mkdir()
    env = {**os.environ, "YOLOC_CACHE": str(cache), "PYTHONPATH": str(ROOT), "TEST_CPU_COUNT": str(cpus)}
    argv = ["--data", str(data), "--imgsz", "64", "--batch-size", "8", "--base-epochs", "1"]
    p = subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=cache, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ckpt = Path(p.stdout.strip().splitlines()[-1])
    assert ckpt.is_file() and ckpt.is_relative_to(cache), ckpt
    return ckpt, ckpt.parent / f".{ckpt.stem}-run"


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    from utils.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt)
    model = c.get("ema") or c["model"]
    return dict(model.state_dict())


def _metrics(run: Path) -> list[dict]:
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"no epochs in {run / 'results.csv'}"
    return [{k.strip(): v.strip() for k, v in r.items()} for r in rows]


@pytest.mark.slow
def test_demo_base_training_is_reproducible(shapes_yaml, tmp_path):
    (a, run_a), (b, run_b) = (_train_base(shapes_yaml, tmp_path / name, cpus) for name, cpus in (("a", 1), ("b", 4)))
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    assert any(v.numel() for v in sa.values())
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ between two runs with one seed on 1 and 4 cores, e.g. {differ[:5]}"
    assert _metrics(run_a) == _metrics(run_b)
