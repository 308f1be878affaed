# AGPL-3.0 License
"""Every method of the source documents from the CLI on yaml-built YOLOv8n and YOLOv7-tiny: PAGCP,
Group Fisher, network slimming, global L1, and seed 002's analyse -> select -> prune sequence."""

from __future__ import annotations

import ast
import json

import pytest

import compress
import layer_selection
import val
from models.loader import load_model
from prune import build_groups

FAMILIES = ["yolov8n.yaml", "yolov7-tiny.yaml"]
COMMON = ["--img", "64", "--batch", "8", "--workers", "0", "--no-latency", "--calib-images", "4", "--bn-recalib", "8"]
METHODS = {
    "pagcp": ["--method", "pagcp", "--ratio-step", "0.25", "--exp", "--initial_rate", "0.05", "--initial_thres", "2", "--reference-protocol"],
    "fisher": ["--method", "fisher", "--target-flops", "0.9", "--interval", "1", "--channels-per-step", "64",
               "--hyp", "scratch-low"],
    "slim": ["--method", "slim", "--target-flops", "0.8"],
    "l1-global": ["--method", "l1", "--global", "--target-flops", "0.8"],
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("cfg", FAMILIES)
def test_method_cli_on_family(cfg, method, shapes_yaml, tmp_path):
    rc = compress.main(["--weights", cfg, "--data", str(shapes_yaml), "--epochs", "0", *COMMON, *METHODS[method],
                        "--project", str(tmp_path)])
    assert rc == 0
    s = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert s["after"]["gflops"] < s["before"]["gflops"] and s["after"]["params"] < s["before"]["params"]
    if "--target-flops" in METHODS[method]:
        target = float(METHODS[method][METHODS[method].index("--target-flops") + 1])
        assert s["flops_ratio"] <= target + 0.03  # conv FLOPs planned; the head's fixed part moves the total a bit
    pruned = load_model(tmp_path / "exp" / "pruned.pt")  # a normal checkpoint: loads with no yaml
    assert sum(p.numel() for p in pruned.parameters()) == s["after"]["params"]


@pytest.mark.parametrize("cfg", FAMILIES)
def test_seed_002_sequence(cfg, shapes_yaml, tmp_path, capsys):
    """val.py --task sensitivity -> layer_selection.py -> compress.py --pruning-params, with the seed's flags."""
    groups = build_groups(load_model(cfg, nc=4), imgsz=64)
    layers = [g.id for g in groups.prunable[:3]]
    out = tmp_path / "sens"
    rc = val.main(["--task", "sensitivity", "--weights", cfg, "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                   "--workers", "0", "--pruning-rate", "[0.25,0.5]", "--criterion", "0", "--layers", str(layers),
                   "--project", str(tmp_path), "--name", "sens"])
    assert rc == 0 and len((out / "output_0.5.txt").read_text().splitlines()) == len(layers)
    capsys.readouterr()
    assert layer_selection.main(["--output", str(out), "--params-layers", "1", "--flops-layers", "1"]) == 0
    chosen = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert chosen and all(layer in layers and rate in (0.25, 0.5) for layer, rate in chosen)
    rc = compress.main(["--weights", cfg, "--data", str(shapes_yaml), "--epochs", "0", *COMMON, "--criterion", "0",
                        "--pruning-params", str(chosen), "--project", str(tmp_path / "c")])
    assert rc == 0
    s = json.loads((tmp_path / "c" / "exp" / "summary.json").read_text())
    assert s["after"]["params"] < s["before"]["params"]
