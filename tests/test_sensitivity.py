# AGPL-3.0 License
"""Sensitivity analysis (seed 002 format, resumable) and layer selection."""

from __future__ import annotations

import ast
import json
import math

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
    assert list(plan) == [g.id] and len(plan[g.id]) % 2 == 0 and len(plan[g.id]) == math.ceil(0.5 * len(g) / 2) * 2
    # the seed's make_divisible(rate * channels, 2): 0.3 x 16 = 4.8 -> 6 channels, 0.01 x 16 -> 2
    g16 = next(x for x in groups.prunable if len(x) == 16)
    assert [len(layer_plan(groups, scores, [(g16.id, r)])[g16.id]) for r in (0.3, 0.25, 0.01)] == [6, 4, 2]
    with pytest.raises(ValueError, match="not a prunable layer"):
        layer_plan(groups, scores, [(10_000, 0.5)])
    assert str(g.id) in show_layers(groups)
    assert np.all([len(v) % 2 == 0 for v in layer_plan(groups, scores, 0.3).values()])


def test_layer_selection_errors(tmp_path, capsys):
    assert layer_selection.main(["--output", str(tmp_path)]) == 2
    assert "no output_*.txt" in capsys.readouterr().err


# ---------------------------------------------------------------- CLI: val.py --task sensitivity


def _sens(tmp_path, shapes_yaml, *extra):
    import val

    return val.main(["--task", "sensitivity", "--weights", "yolov5n.yaml", "--data", str(shapes_yaml),
                     "--img", "64", "--batch", "8", "--workers", "0", "--pruning-rate", "[0.25,0.5]",
                     "--criterion", "0", "--layers", "[1,3,6]", "--project", str(tmp_path), "--name", "s",
                     "--no-progress", *extra])


@pytest.fixture
def count_validations(monkeypatch):
    """Counts engine.validation.validate calls; fail_after=N raises KeyboardInterrupt at the N+1th."""
    import engine.validation as validator

    real, state = validator.validate, {"n": 0, "fail_after": None}

    def counting(*a, **k):
        if state["fail_after"] is not None and state["n"] >= state["fail_after"]:
            raise KeyboardInterrupt
        state["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(validator, "validate", counting)
    return state


def test_cli_outputs_and_resume(tmp_path, shapes_yaml, count_validations, capsys):
    # interrupted after the unpruned model + 2 layers
    count_validations["fail_after"] = 3
    assert _sens(tmp_path, shapes_yaml) == 130  # Ctrl-C: like compress.py/train.py, one line and status 130
    assert capsys.readouterr().err.strip().endswith("interrupted: the analysis keeps every finished layer: "
                                                    "continue with the same command and --resume")
    out = tmp_path / "s"
    assert len((out / "output_0.25.txt").read_text().splitlines()) == 2 and not (out / "output_0.5.txt").exists()
    assert (out / "meta.json").exists()  # written first: a partial analysis is usable
    # --resume: the base model and the 2 done layers are not validated again, 4 remain
    count_validations.update(n=0, fail_after=None)
    assert _sens(tmp_path, shapes_yaml, "--resume") == 0
    assert count_validations["n"] == 4
    assert not (tmp_path / "s2").exists()
    import yaml

    names = yaml.safe_load(shapes_yaml.read_text())["names"]
    for rate in (0.25, 0.5):
        recs = [ast.literal_eval(x) for x in (out / f"output_{rate}.txt").read_text().splitlines()]
        assert [r[0] for r in recs] == [1, 3, 6]
        for _idx, (_p, _r, _m50, _m, maps, timing, params, gfl) in recs:
            assert len(maps) == len(names) and len(timing) == 6 and timing[3:] == (64, 64, 8)
            assert abs(timing[2] - timing[0] - timing[1]) < 1e-9 and params > 0 and gfl > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rates"] == [0.25, 0.5] and meta["criterion"] == "l2"
    rows = (out / "sensitivity.csv").read_text().splitlines()
    assert rows[0].startswith("layer,rate,") and len(rows) == 1 + 6
    png = out / "sensitivity.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    # every pruned record is smaller than the analysed model, more so at the higher rate
    r25 = {k: v[1] for k, v in layer_selection.load_analysis(out)[0.25].items()}
    r50 = {k: v[1] for k, v in layer_selection.load_analysis(out)[0.5].items()}
    assert all(r50[k][6] < r25[k][6] < meta["params"] and r50[k][7] < r25[k][7] < meta["gflops"] for k in r25)
    # same --name with --exist-ok: everything done, nothing validated; other settings are refused
    count_validations["n"] = 0
    assert _sens(tmp_path, shapes_yaml, "--exist-ok") == 0 and count_validations["n"] == 0
    capsys.readouterr()
    assert _sens(tmp_path, shapes_yaml, "--exist-ok", "--criterion", "2") == 2
    assert "other settings" in capsys.readouterr().err
    # layer selection from the CLI output: budgets respected, params/flops defaults from meta.json
    assert layer_selection.main(["--output", str(out), "--params-layers", "1", "--flops-layers", "1"]) == 0
    chosen = ast.literal_eval(capsys.readouterr().out.strip())
    assert 1 <= len(chosen) <= 2 and {k for k, _ in chosen} <= {1, 3, 6} and all(r in (0.25, 0.5) for _, r in chosen)


@pytest.mark.parametrize("rate", ["[0.25,1.5]", "0", "[0.5", "abc", "[]"])
def test_cli_bad_rate(tmp_path, shapes_yaml, rate, capsys):
    assert _sens(tmp_path, shapes_yaml, "--pruning-rate", rate) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: --pruning-rate") and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing written


def test_cli_bad_criterion_and_layers(tmp_path, shapes_yaml, capsys):
    assert _sens(tmp_path, shapes_yaml, "--criterion", "taylor") == 2
    assert "--criterion" in capsys.readouterr().err
    assert _sens(tmp_path, shapes_yaml, "--layers", "[9999]") == 2
    assert "not prunable" in capsys.readouterr().err


def _write_analysis(out, rows: dict[float, dict[int, tuple[float, int, float]]], params=1000, gflops=10.0):
    """rows: rate -> layer -> (mAP50-95, params after, GFLOPs after)."""
    out.mkdir()
    for rate, layers in rows.items():
        lines = [repr((k, (0.5, 0.5, 0.5, m, [m], (1.0, 0.1, 1.1, 64, 64, 1), p, f))) for k, (m, p, f) in layers.items()]
        (out / f"output_{rate}.txt").write_text("\n".join(lines) + "\n")
    (out / "meta.json").write_text(json.dumps({"params": params, "gflops": gflops}))


def test_layer_selection_values(tmp_path, capsys):
    # params value (1000 - p) * m^k, FLOPs value (10 - f) * m^k; each layer keeps its best rate
    _write_analysis(tmp_path / "a", {
        0.25: {1: (0.50, 900, 9.0), 2: (0.50, 950, 8.0), 3: (0.49, 800, 9.9)},
        0.5: {1: (0.40, 800, 8.0), 2: (0.45, 900, 6.0), 3: (0.10, 600, 9.8)},
    })
    run = lambda *a: (layer_selection.main(["--output", str(tmp_path / "a"), *a]),  # noqa: E731
                      capsys.readouterr().out.strip())
    # k=1: params 1:(50,80)->0.5 2:(25,45)->0.5 3:(98,40)->0.25 ; flops 1:(.5,.8) 2:(1,1.8) 3:(.049,.02)
    assert run("--params-layers", "1", "--flops-layers", "1", "--params-map", "1", "--flops-map", "1") == \
        (0, "[(2, 0.5), (3, 0.25)]")
    # k=0 (mAP ignored): the largest reductions win
    assert run("--params-layers", "2", "--flops-layers", "1", "--params-map", "0", "--flops-map", "0") == \
        (0, "[(1, 0.5), (2, 0.5), (3, 0.5)]")
    # --params overrides meta.json: with 2000, layer 1's best rate becomes 0.25 (1100*0.5 > 1200*0.4)
    assert run("--params-layers", "2", "--flops-layers", "0", "--params-map", "1")[1] == "[(1, 0.5), (3, 0.25)]"
    assert run("--params-layers", "2", "--flops-layers", "0", "--params-map", "1", "--params", "2000")[1] == \
        "[(1, 0.25), (3, 0.25)]"
    assert run("--params-layers", "0", "--flops-layers", "0")[1] == "[]"
    assert run("--params-layers", "-1")[0] == 2


def test_compress_pruning_params_needs_criterion(shapes_yaml, capsys):
    import compress

    argv = ["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--pruning-params", "[(1, 0.5)]"]
    assert compress.main(argv) == 2  # the default method (PAGCP) would silently ignore the list
    assert "--criterion" in capsys.readouterr().err


def test_plain_val_unaffected(tmp_path, shapes_yaml):
    import val

    argv = ["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--workers", "0",
            "--project", str(tmp_path), "--name", "v", "--no-progress"]
    assert val.main(argv) == 0 and (tmp_path / "v" / "metrics.json").exists()
    assert not (tmp_path / "v" / "args.json").exists()
