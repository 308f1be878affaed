# AGPL-3.0 License
"""Sensitivity analysis (seed 002 format, resumable) and layer selection."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

import layer_selection
from models.loader import load_model
from prune import build_groups
from prune.importance import get_criterion
from prune.sensitivity import layer_plan, parse_pruning_params, parse_rates, run_analysis, show_layers


def _setup():
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=3).eval()
    groups = build_groups(model)
    scores = {g.id: get_criterion("l2")(model, g) for g in groups.prunable}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)[0]

    def evaluate():  # stand-in validation: closeness of the masked model's output to the original's
        with torch.no_grad():
            d = float((model(x)[0] - ref).abs().mean() / ref.abs().mean())
        m = max(0.0, 1.0 - d)
        return {"p": m, "r": m, "map50": m, "map50_95": m * 0.6, "maps": [m] * 3, "t_inf": 1.0, "t_nms": 0.5,
                "h": 32, "w": 32, "batch": 1}

    return model, groups, scores, evaluate


def test_analysis_format_resume_and_selection(tmp_path, capsys):
    model, groups, scores, evaluate = _setup()
    out = tmp_path / "sens"
    calls = []

    def counting():
        calls.append(1)
        return evaluate()

    run_analysis(model, groups, counting, scores, [0.25, 0.5], out, 1000, 2.0, progress=lambda s: None)
    n = len(groups.prunable)
    assert len(calls) == 2 * n
    lines = (out / "output_0.5.txt").read_text().splitlines()
    rec = ast.literal_eval(lines[0])
    idx, (p, r, m50, m, maps, timing, params, gfl) = rec
    assert len(lines) == n and len(maps) == 3 and len(timing) == 6 and params < 1000 + 1 and gfl < 2.0
    assert (out / "sensitivity.csv").exists() and (out / "sensitivity.png").exists()
    # interrupted analysis: drop the last lines (and cut one in half), rerun -> only the missing layers run
    f = out / "output_0.5.txt"
    f.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:10])
    calls.clear()
    run_analysis(model, groups, counting, scores, [0.25, 0.5], out, 1000, 2.0, progress=lambda s: None)
    assert len(calls) == 3 and len(f.read_text().splitlines()) == n
    # layer selection with defaults from meta.json
    assert layer_selection.main(["--output", str(out), "--params-layers", "3", "--flops-layers", "2"]) == 0
    chosen = ast.literal_eval(capsys.readouterr().out.strip())
    assert 2 <= len(chosen) <= 5 and all(r in (0.25, 0.5) for _, r in chosen)


def test_layer_plan_and_parsing():
    model, groups, scores, _ = _setup()
    assert parse_rates("[0.25,0.5,0.75]") == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        parse_rates("[1.5]")
    assert parse_pruning_params("0.3") == 0.3
    g = groups.prunable[3]
    pairs = parse_pruning_params(f"[({g.id}, 0.5)]")
    plan = layer_plan(groups, scores, pairs)
    assert list(plan) == [g.id] and len(plan[g.id]) % 2 == 0 and len(plan[g.id]) == round(0.5 * len(g)) // 2 * 2
    with pytest.raises(ValueError, match="not a prunable layer"):
        layer_plan(groups, scores, [(10_000, 0.5)])
    assert str(g.id) in show_layers(groups)
    assert np.all([len(v) % 2 == 0 for v in layer_plan(groups, scores, 0.3).values()])


def test_layer_selection_errors(tmp_path, capsys):
    assert layer_selection.main(["--output", str(tmp_path)]) == 2
    assert "no output_*.txt" in capsys.readouterr().err
