# AGPL-3.0 License
"""bench/custom_data.py's parts, fast: seed aggregation, variants, row selection, the Torch-Pruning adapter."""

from __future__ import annotations

import random
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


def _opt(**kw):
    import custom_data

    o = custom_data.parse_opt([])
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_aggregate_mean_and_half_range_from_seeds():
    from custom_report import aggregate, spread

    rng = random.Random(7)
    seeds = [0, 1, 2]
    control = {s: {"map50_95": rng.uniform(0.3, 0.6)} for s in seeds}
    runs = {s: {"map50_95": rng.uniform(0.1, 0.3), "map50": rng.uniform(0.3, 0.5), "params": 10, "notes": ["n"]}
            for s in seeds}
    row = aggregate(runs, control)
    vals = [runs[s]["map50_95"] for s in seeds]
    assert row["map50_95"] == pytest.approx(sum(vals) / 3)
    assert row["map50_95_pm"] == pytest.approx((max(vals) - min(vals)) / 2)
    shares = [runs[s]["map50_95"] / control[s]["map50_95"] for s in seeds]
    assert row["share_of_control"] == pytest.approx(sum(shares) / 3)
    assert row["share_of_control_pm"] == pytest.approx((max(shares) - min(shares)) / 2)
    assert [row["per_seed"][str(s)]["map50_95"] for s in seeds] == vals and row["seeds"] == seeds
    assert row["notes"] == ["n"] and row["params"] == 10
    # a failed seed is left out of the mean and named in the notes
    runs[1] = {"error": "compress.py exit 1"}
    row = aggregate(runs, control)
    assert row["seeds"] == [0, 2] and row["map50_95"] == pytest.approx((vals[0] + vals[2]) / 2)
    assert any("seed 1" in n for n in row["notes"])
    assert spread([]) == (None, None) and spread([0.5]) == (0.5, 0.0)


def test_table_prints_mean_spread_and_per_seed():
    from custom_report import table

    row = {"run": "pagcp@0.5", "method": "PAGCP", "map50_95": 0.41, "map50_95_pm": 0.02, "seeds": [0, 1],
           "share_of_control": 0.9, "share_of_control_pm": 0.01,
           "per_seed": {"0": {"map50_95": 0.39}, "1": {"map50_95": 0.43}}}
    line = table([row])[2]
    assert "0.410 ± 0.020" in line and "0.390 0.430" in line and "0.900 ± 0.010" in line


def test_variants_parse_and_plan_rows():
    import custom_data

    from utils.general import UsageError

    v = custom_data.parse_variants(["one-shot=--one-shot", 'nokd=--no-distill --seed-extra "a b"', "plain="])
    assert v == {"one-shot": "--one-shot", "nokd": '--no-distill --seed-extra "a b"', "plain": ""}
    for bad in (["noequals"], ["a b=--x"], ["x=--a", "x=--b"], ['q=--a "open']):
        with pytest.raises(UsageError):
            custom_data.parse_variants(bad)
    o = _opt(methods=["pagcp", "tp-l2"], targets=[0.5], divisor_targets=[], compress_args="--rounds 2")
    rows = custom_data.plan(o, {"one-shot": "--one-shot"})
    assert [(r[0], r[4]) for r in rows] == [("pagcp@0.5", "--rounds 2"), ("tp-l2@0.5", "--rounds 2"),
                                            ("one-shot/pagcp@0.5", "--rounds 2 --one-shot")]


def test_bad_variant_and_epoch_budget_are_one_line(tmp_path, capsys):
    import custom_data

    assert custom_data.main(["--variant", "x", "--project", str(tmp_path)]) == 2
    assert custom_data.main(["--methods", "fisher", "--epochs", "1", "--project", str(tmp_path)]) == 2
    assert custom_data.main(["--compress-args", '"open', "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("ERROR: ") for e in err) and "NAME=ARGS" in err[0]
    assert "fisher" in err[1] and "--compress-args" in err[2]
    assert not any(tmp_path.iterdir())


def test_profile_fills_only_what_is_not_given():
    import custom_data

    o = custom_data.parse_opt(["--data", "x/aquarium.yaml", "--epochs", "3"])
    custom_data.apply_profile(o)
    prof = custom_data.PROFILES["aquarium"]
    assert (o.imgsz, o.base_epochs, o.epochs) == (prof["imgsz"], prof["base_epochs"], 3)
    o = custom_data.parse_opt([])
    custom_data.apply_profile(o)
    assert o.imgsz == custom_data.PROFILES[""]["imgsz"]


def test_tp_rows_skipped_with_one_line_without_torch_pruning(monkeypatch, caplog):
    import custom_data
    import tp_rows

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # `import torch_pruning` raises ImportError
    assert not tp_rows.tp_available()
    o = _opt(methods=["l1", "tp-l2", "tp-groupnorm"], targets=[0.7, 0.5], divisor_targets=[0.5])
    warned = []
    monkeypatch.setattr(custom_data.LOGGER, "warning", lambda msg, *a: warned.append(msg))
    todo, skipped = custom_data.select_rows(custom_data.plan(o))
    assert [r[0] for r in todo] == ["l1@0.7", "l1@0.5", "l1@0.5-d16"]
    assert {k for k, v in skipped.items() if v == tp_rows.TP_MISSING} == {"tp-l2@0.7", "tp-l2@0.5", "tp-groupnorm@0.7",
                                                                        "tp-groupnorm@0.5"}
    assert warned == [tp_rows.TP_MISSING]  # one line, not one per row


@pytest.mark.parametrize("method", ["tp-l2", "tp-groupnorm"])
def test_tp_adapter_reaches_flops_share_and_saves_loadable_checkpoint(tmp_path, method):
    pytest.importorskip("torch_pruning", reason="torch_pruning not installed (requirements-bench.txt)")
    import tp_rows

    from engine.recipe import pruned_reason
    from models.loader import detection_head, load_model
    from utils.flops import gflops

    model = load_model(ROOT / "models" / "yolov5n.yaml")
    head_in = [m.in_channels for m in detection_head(model).m]
    cut, info = tp_rows.tp_prune(model, method, 0.5, 64, tol=0.02)
    share = gflops(cut, 64) / gflops(model, 64)
    assert abs(share - 0.5) <= 0.02 and info["flops_share"] == pytest.approx(share)
    assert 0 < info["ratio"] < 1 and abs(info["tp_macs_share"] - share) < 0.05
    assert [m.out_channels for m in detection_head(cut).m] == [m.out_channels for m in detection_head(model).m]
    assert [m.in_channels for m in detection_head(cut).m] != head_in  # its inputs are cut, its outputs are not
    out = tp_rows.save_tp_checkpoint(cut, tmp_path / "tp.pt", method, "yolov5n.yaml", info)
    back = load_model(out)
    assert gflops(back, 64) == pytest.approx(gflops(cut, 64), rel=1e-3)
    assert pruned_reason(out) and "pruning record" in pruned_reason(out)
    assert back(__import__("torch").zeros(1, 3, 64, 64))[0].shape[-1] == model.nc + 5
