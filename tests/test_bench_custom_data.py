# AGPL-3.0 License
"""bench/custom_data.py end to end on a tiny VOC set: base, control, pruning runs per seed, latency, report, resume."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT
from tests.test_voc import _voc, _xml

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_custom_data_bench_tiny_killed_resumed_and_seeded(tmp_path, monkeypatch):
    import custom_data

    import compress

    ann = {f"{i}": _xml([("cat" if i % 2 else "dog", 0, (21, 11, 61, 51))]) for i in range(4)}
    data = _voc(tmp_path / "ds", ann)
    args = ["--data", str(data), "--weights", "yolov5n.yaml", "--imgsz", "64", "--batch-size", "4", "--base-epochs",
            "1", "--epochs", "1", "--targets", "0.7", "--divisor-targets", "0.5", "--methods", "l1",
            "--latency-repeats", "1", "--workers", "0", "--project", str(tmp_path / "bench"), "--name", "b",
            "--compress-args=--one-shot", "--seeds", "0"]  # 4 images: too few optimizer steps for gradual cuts
    real = compress.main
    calls = []

    def killed_on_second(argv):  # Ctrl-C during the second pruning run
        calls.append(argv)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(argv)

    monkeypatch.setattr(compress, "main", killed_on_second)
    assert custom_data.main(args) == 130
    run = tmp_path / "bench" / "b"
    state = json.loads((run / "state.json").read_text())
    assert {"base", "control#s0", "l1@0.7#s0"} <= set(state) and "l1@0.5-d16#s0" not in state
    monkeypatch.setattr(compress, "main", lambda argv: calls.append(argv) or real(argv))
    n = len(calls)
    assert custom_data.main(args + ["--exist-ok"]) == 0
    assert len(calls) - n == 1  # only the unfinished run: finished steps are skipped
    state2 = json.loads((run / "state.json").read_text())
    assert state2["l1@0.7#s0"] == state["l1@0.7#s0"] and state2["base"] == state["base"]
    d16 = state2["l1@0.5-d16#s0"]
    assert abs(d16["flops_share"] - 0.5) <= 0.02 and d16["divisor"] == 16 and not d16["notes"]
    # a second seed: every row runs again with it, the base is shared
    n = len(calls)
    assert custom_data.main([*args[:-1], "0", "1", "--exist-ok"]) == 0
    assert len(calls) - n == 2 and "--seed" in calls[-1] and calls[-1][calls[-1].index("--seed") + 1] == "1"
    state3 = json.loads((run / "state.json").read_text())
    assert state3["base"] == state["base"] and {"control#s1", "l1@0.7#s1", "l1@0.5-d16#s1"} <= set(state3)
    table = (run / "results.md").read_text()
    assert "| base | unpruned, 1 epochs |" in table and "| control | unpruned, 1+1 epochs |" in table
    res = json.loads((run / "results.json").read_text())
    rows = {r["run"]: r for r in res["rows"]}
    assert res["spread"] == "half-range" and rows["l1@0.7"]["seeds"] == [0, 1]
    per = [v["map50_95"] for v in rows["l1@0.7"]["per_seed"].values()]
    assert rows["l1@0.7"]["map50_95"] == pytest.approx(sum(per) / 2)
    assert all(r["latency_ms"] > 0 for r in rows.values() if "latency_ms" in r)
    assert [r.get("train_epochs") for r in res["rows"][:3]] == [0, 1, 1]  # after the base: none, 1, 1
    assert (run / "map_vs_gflops.png").stat().st_size > 1000 and (run / "map_vs_latency.png").stat().st_size > 1000
    assert (run / "results.csv").read_text().count("\n") == len(rows) + 1
    # other settings are refused, not mixed into the same folder
    assert custom_data.main([*args, "--exist-ok", "--epochs", "2"]) == 2


def test_custom_data_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    import custom_data

    monkeypatch.setenv("YOLOC_DATASETS", str(tmp_path / "none"))

    assert custom_data.main(["--data", str(tmp_path / "missing.yaml"), "--project", str(tmp_path)]) == 2
    assert custom_data.main(["--targets", "1.2", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("ERROR: ") for e in err) and "(0, 1)" in err[1]
    assert not any(tmp_path.iterdir())  # no run folder for bad input


@pytest.mark.slow
def test_custom_data_bench_tiny_torch_pruning_row(tmp_path):
    pytest.importorskip("torch_pruning", reason="torch_pruning not installed (requirements-bench.txt)")
    import custom_data

    ann = {f"{i}": _xml([("cat" if i % 2 else "dog", 0, (21, 11, 61, 51))]) for i in range(4)}
    data = _voc(tmp_path / "ds", ann)
    assert custom_data.main(["--data", str(data), "--weights", "yolov5n.yaml", "--imgsz", "64", "--batch-size", "4",
                             "--base-epochs", "1", "--epochs", "1", "--targets", "0.5", "--divisor-targets", "0.5",
                             "--methods", "tp-l2", "--latency-repeats", "1", "--workers", "0", "--seeds", "0",
                             "--project", str(tmp_path / "bench"), "--name", "b"]) == 0
    rows = {r["run"]: r for r in json.loads((tmp_path / "bench" / "b" / "results.json").read_text())["rows"]}
    tp = rows["tp-l2@0.5"]
    assert abs(tp["flops_share"] - 0.5) <= 0.02 and tp["train_epochs"] == 1 and tp["map50_95"] is not None
    assert tp["params"] < rows["base"]["params"] and tp["latency_ms"] > 0
    assert "not run" in rows["tp-l2@0.5-d16"]["notes"][0]
