# AGPL-3.0 License
"""Pruning to a measured latency (prune/latency_table.py, engine/latency_target.py) and PAGCP's cost hook."""

from __future__ import annotations

import builtins
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pagcp_budget import TASKS, _distortion_oracle, tiny  # noqa: F401  (the module-scoped fixture)

import compress
from prune import latency_table as lt
from engine.latency_target import check_options
from prune import latency as pl
from prune.methods.pagcp.budget import FlopsBudget, prune_to_flops
from prune.methods.pagcp.greedy import BudgetedGreedy
from prune.methods.pagcp.reference import PAGCPConfig
from utils import runtimes as rt
from utils.general import UsageError

ort = pytest.importorskip("onnxruntime", reason="the latency table times layers on onnxruntime")


def _opt(**kw):
    opt = compress.parse_opt(["--weights", "x.pt", "--data", "coco128.yaml", "--epochs", "0"])
    for k, v in kw.items():
        setattr(opt, k, v)
    return opt


@pytest.mark.parametrize("kw, words", [
    (dict(target_speedup=1.5, target_flops=0.5), "only one of"),
    (dict(target_speedup=1.0), "must be > 1"),
    (dict(target_latency=0.0), "must be > 0"),
    (dict(target_speedup=1.5, method="l1"), "--method pagcp"),
    (dict(target_speedup=1.5, flops_budget="search"), "--flops-budget greedy"),
    (dict(target_speedup=1.5, runtime="tensorflow"), "unknown --runtime"),
    (dict(target_latency=5.0, runtime_batch=0), "--runtime-batch"),
])
def test_bad_latency_flags_are_refused_in_one_line(kw, words):
    with pytest.raises(UsageError, match=words) as e:
        check_options(_opt(**kw))
    assert "\n" not in str(e.value)


def test_absent_runtime_names_the_package(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(UsageError, match="'openvino' package is not installed"):
        check_options(_opt(target_speedup=1.5, runtime="openvino"))


def test_threads_default_to_the_cores():
    opt = _opt(target_speedup=1.5)
    check_options(opt)
    assert opt.runtime_threads == rt.default_threads() >= 1


def _step_table(block: int, n: int = 64) -> pl.LatencyTable:
    """A layer whose time steps up at every `block` channels (SIMD blocking), with one slow outlier."""
    out = [[c, 0.1 * -(-c // block) + (0.5 if c == 2 * block - 1 else 0.0)] for c in range(1, n + 1)]
    return pl.LatencyTable({}, {"a": {"cin": 8, "cout": n, "dw": False, "out": out, "in": [[4, 0.5], [8, 1.0]]}})


@pytest.mark.parametrize("block", [8, 16])
def test_rewarded_counts_are_the_block_edges(block):
    t = _step_table(block)
    assert t.rewarded("a") == list(range(block, 65, block))
    assert t.rewarded("a", n_max=40) == [c for c in range(block, 41, block)] + ([40] if 40 % block else [])


def test_layer_cost_interpolates_and_scales_with_inputs():
    t = _step_table(8)
    assert t.layer_ms("a", 8, 64) == pytest.approx(0.8)
    assert t.layer_ms("a", 4, 64) == pytest.approx(0.4)  # half the inputs: the in-curve's ratio
    assert t.layer_ms("a", 8, 0) == 0 and t.layer_ms("missing", 8, 8) == 0


def test_table_is_built_once_then_read_from_the_cache(tiny, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("YOLOC_CACHE", str(tmp_path))
    monkeypatch.setattr(pl, "MAX_POINTS", 4)  # a coarse grid: this tests the plumbing, not the timings
    model, groups = tiny
    table, info = lt.load_or_build(model, groups, "onnxruntime", 1, 1, 64)
    assert not info["cached"] and info["seconds"] > 0 and tmp_path in Path(info["file"]).parents
    convs = [n for n, ci in groups.graph.conv_info.items() if ci.kind == "conv"]
    assert set(table.layers) == set(convs)
    again, info2 = lt.load_or_build(model, groups, "onnxruntime", 1, 1, 64)
    assert info2["cached"] and again.layers == table.layers
    _, info3 = lt.load_or_build(model, groups, "onnxruntime", 2, 1, 64)  # other threads: another table
    assert not info3["cached"] and info3["file"] != info["file"]
    before, after = table.cost(groups, {})
    assert before == after > 0
    g = max(groups.prunable, key=len)
    b2, a2 = table.cost(groups, {g.id: list(range(len(g) // 2))})
    assert b2 == before and a2 < before


def _stair_cost(groups, block=8):
    """A synthetic runtime: every conv costs its output channels rounded up to `block` times its inputs."""
    full = {g.id: len(g) for g in groups.prunable}

    def cost(groups_, removed):
        b = sum(-(-n // block) for n in full.values())
        a = sum(-(-(n - len(removed.get(gid, []))) // block) for gid, n in full.items())
        return float(b), float(a)

    return cost


def test_greedy_prices_the_pluggable_cost_and_keeps_allowed_counts(tiny):  # noqa: F811
    """With a cost function and allowed kept counts the budgeted greedy lands on the cost's share and keeps only
    the allowed counts; without them (FLOPs) nothing changes."""
    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    cost = _stair_cost(groups)
    counts = {g.id: sorted({*range(8, len(g) + 1, 8), len(g)}) for g in groups.prunable}
    cfg = PAGCPConfig(step=0.05, trip="mean", min_keep=1)
    budget = FlopsBudget(0.7, tol=0.05, rounds=2, round_cut=None, cost=cost, counts=counts)
    pol = BudgetedGreedy(model, groups, _distortion_oracle(model, x), TASKS, cfg, budget, progress=False)
    removed, _ = pol.run()
    b, a = cost(groups, removed)
    assert abs(a / b - 0.7) <= 0.05 + 1e-9
    for g in groups.prunable:
        kept = len(g) - len(removed.get(g.id, []))
        assert kept in counts[g.id]
    assert any(removed.values())
    with pytest.raises(ValueError, match="budgeted greedy only"):
        prune_to_flops(model, groups, lambda c: None, TASKS, cfg, FlopsBudget(0.7, mode="search", cost=cost),
                       progress=False)


def test_runtime_call_runs_a_layer_on_each_installed_runtime():
    x = np.random.rand(1, 4, 8, 8).astype(np.float32)
    graph = rt.conv_graph(4, 6, (3, 3), (1, 1), (1, 1), 1, (8, 8), 1)
    out = rt.runtime_call("onnxruntime", graph, 1, x)()
    assert np.asarray(out[0]).shape == (1, 6, 8, 8)
    pytest.importorskip("openvino", reason="openvino not installed")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "l.onnx"
        f.write_bytes(graph)
        res = rt.runtime_call("openvino", f, 1, x)()
        # OpenVINO's CPU plugin may compute in a lower precision by default (as deployed): close, not equal
        assert np.allclose(np.asarray(res[0]), np.asarray(out[0]), rtol=5e-3, atol=2e-2)


def _compress(args, tmp_path):
    return compress.main(["--weights", "yolov5n.yaml", "--img", "128", "--batch", "8", "--epochs", "0",
                          "--calib-images", "8", "--search-images", "4", "--bn-recalib", "0", "--runtime-threads", "1",
                          "--project", str(tmp_path / "runs"), "--workers", "0"] + args)


@pytest.mark.slow
def test_compress_to_a_measured_speedup_then_from_the_cache(shapes_yaml, tmp_path, monkeypatch, capsys):
    """End to end on the built-in data: the run measures base and pruned on the runtime and reports them
    (summary.json, report.md); a second run on the same model reads the cached table; a target the base already
    meets and one no plan reaches are refused in one line."""
    monkeypatch.setenv("YOLOC_CACHE", str(tmp_path / "cache"))
    assert _compress(["--data", str(shapes_yaml), "--target-speedup", "1.3", "--name", "a"], tmp_path) == 0
    s = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
    lat = s["latency_target"]
    assert lat["runtime"] == "onnxruntime" and lat["threads"] == 1 and not lat["table"]["cached"]
    assert Path(lat["table"]["file"]).exists() and tmp_path / "cache" in Path(lat["table"]["file"]).parents
    assert lat["speedup"] == pytest.approx(lat["base_ms"] / lat["pruned_ms"])
    assert lat["target_ms"] == pytest.approx(lat["base_ms_alone"] / 1.3)
    assert lat["met"] == (lat["pruned_ms"] <= lat["goal_ms"] * (1 + lat["tolerance"]))
    assert lat["goal_ms"] == pytest.approx(lat["base_ms"] / 1.3)  # of the base measured beside the pruned model
    assert len(lat["rounds"]) == len(s["rounds"]) and all("latency" in r for r in s["rounds"])
    assert lat["met"] or len(s["rounds"]) == 1 + 2  # a miss gets the top-up rounds (cfg latency_topups)
    assert "## Latency target" in (tmp_path / "runs" / "a" / "report.md").read_text()
    assert s["rounds"][0]["channels_removed"] > 0
    # a speedup, not milliseconds from run a: the load on the cores may change between two runs' timings
    assert _compress(["--data", str(shapes_yaml), "--target-speedup", "1.2", "--name", "b"], tmp_path) == 0
    s2 = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    assert s2["latency_target"]["table"]["cached"] and s2["latency_target"]["table"]["file"] == lat["table"]["file"]
    capsys.readouterr()
    assert _compress(["--data", str(shapes_yaml), "--target-latency", "10000", "--name", "c"], tmp_path) == 2
    assert "already runs at" in capsys.readouterr().err
    assert _compress(["--data", str(shapes_yaml), "--target-speedup", "1000", "--name", "d"], tmp_path) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "c").exists() and not (tmp_path / "runs" / "d").exists()
