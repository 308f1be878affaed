# AGPL-3.0 License
"""Latency measurement (engine/latency.py): interleaved timing, val.py --task speed, compress.py's latency line."""

from __future__ import annotations

import copy
import json

import val
from engine.latency import compress_latency, time_interleaved
from models.loader import load_model
from prune import apply_removal, build_groups
from prune.importance import get_criterion
from prune.plans import plan_uniform
from utils.flops import count_params


def test_time_interleaved_rotates_the_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = time_interleaved(fns, warmup=2, repeats=6)
    assert calls[:6] == list("aabbcc")  # warm-up: each model on its own
    rounds = [calls[6 + 3 * r: 9 + 3 * r] for r in range(6)]
    assert [r[0] for r in rounds] == list("abcabc")  # every model leads a round in turn: drift hits all alike
    assert all(sorted(r) == list("abc") for r in rounds)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}


def test_val_task_speed_writes_table_and_json(tmp_path, capsys):
    rc = val.main(["--task", "speed", "--weights", "yolov5n.yaml", "--img", "64", "--batch", "2",
                   "--project", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    result = json.loads((tmp_path / "exp" / "speed.json").read_text())
    got = {(r["backend"], r["batch"]) for r in result["results"]}
    assert got == {("pytorch", 1), ("pytorch", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    assert all(r["ms_per_image"] > 0 and r["runs"] > 0 for r in result["results"])
    assert result["params"] == count_params(load_model("yolov5n.yaml"))
    cap = capsys.readouterr()
    assert "onnxruntime" in cap.out + cap.err  # the table is printed


def test_compress_latency_base_vs_pruned():
    base = load_model("yolov5n.yaml").eval()
    groups = build_groups(base, imgsz=64)
    scores = {g.id: get_criterion("l1")(base, g) for g in groups.prunable}
    pruned = copy.deepcopy(base)
    apply_removal(pruned, groups, plan_uniform(groups, scores, ratio=0.5))
    out = compress_latency(base, pruned, 64, flops_ratio=0.25)
    assert out["base_ms"] > 0 and out["pruned_ms"] > 0
    assert abs(out["speedup"] - out["base_ms"] / out["pruned_ms"]) < 1e-9
    assert out["flops_factor"] == 4.0
    assert abs(out["speedup_over_flops_factor"] - out["speedup"] / 4) < 1e-9


def test_compress_latency_never_fails_the_run():
    base = load_model("yolov5n.yaml").eval()
    broken = copy.deepcopy(base)

    def refuse(*_):
        raise RuntimeError("cannot trace this")

    broken.model[0].register_forward_hook(refuse)
    out = compress_latency(base, broken, 64)
    assert "cannot trace this" in out["skipped"]


def test_latency_bench_labels_keep_checkpoints_with_the_same_name_apart():
    """bench/latency.py with checkpoints: rows named by file name, or by the shortest distinct path tail where
    names repeat (two runs' pruned.pt were one row before: the second overwrote the first)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("latency_bench", ROOT / "bench" / "latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._labels(["b/base.pt", "r/exp2/pruned.pt", "r/exp3/pruned.pt", "x/other.pt"]) == [
        "base", "exp2/pruned.pt", "exp3/pruned.pt", "other.pt"]
    assert mod._labels(["a.pt", "a/s/p.pt", "b/s/p.pt"]) == ["base", "a/s/p.pt", "b/s/p.pt"]
