# AGPL-3.0 License
"""PAGCP to a FLOPs target (prune/methods/pagcp/budget.py), its trip rules, and the budget guards (engine/safeguards.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import YOLOV5N_PT, need
from test_pagcp import _oracle

import compress
from models.loader import load_model
from prune import build_groups, estimate_flops
from prune.methods.pagcp.reference import PAGCP, PAGCPConfig
from prune.methods.pagcp.budget import FlopsBudget, least_share, prune_to_flops
from prune.methods.pagcp.journal import Journal

TASKS = ["box", "obj", "cls"]


def _distortion_oracle(model, x):
    """test_pagcp's stand-in per-task 'losses' (they grow as channels are removed), counting its images."""
    losses = _oracle(model, x)
    losses.images = len(x)
    return losses


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = load_model("yolov5n.yaml", nc=3).eval()
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # give channels distinct roles
        bn.weight.data.uniform_(0.2, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return m, build_groups(m, imgsz=64)


def _share(groups, removed):
    before, after = estimate_flops(groups, removed)
    return after / before


@pytest.mark.parametrize("mode, schedule, target", [("search", "reference", 0.8), ("search", "flops", 0.6),
                                                    ("greedy", "reference", 0.7)])
def test_target_flops_lands_in_the_band(tiny, mode, schedule, target):
    """The budgeted greedy, or the searched threshold scale, ends within target +- tol (computed from the cut,
    after rounding kept channels to the divisor)."""
    model, groups = tiny
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cheap, full = _distortion_oracle(model, x[:1]), _distortion_oracle(model, x)
    cfg = PAGCPConfig(initial_rate=0.05 if schedule == "reference" else 1.0, step=0.1, search="gallop",
                      schedule=schedule, divisor=4, trip="mean")
    logs = []
    res = prune_to_flops(model, groups, lambda c: cheap if c else full, TASKS, cfg,
                         FlopsBudget(target, tol=0.01, mode=mode), progress=False, log=logs.append)
    share = _share(groups, res.removed)
    assert share == pytest.approx(res.share) and abs(share - target) <= 0.01  # the documented band is +- 0.02
    for g in groups.prunable:  # every cut kept a multiple of --divisor (or the whole group)
        kept = len(g) - len(res.removed.get(g.id, []))
        assert kept == len(g) or kept % 4 == 0
    kinds = [p["kind"] for p in res.passes]
    assert (kinds == ["greedy"] if mode == "greedy" else kinds[0] == "search" and "final" in kinds)
    assert len(logs) == len(res.passes)
    assert res.oracle_calls == sum(p["calls"] for p in res.passes) > 0
    assert res.image_forwards == sum(p["calls"] * p["images"] for p in res.passes)
    searches = [p for p in res.passes if p["kind"] == "search"]
    assert all(p["outcome"] in ("above", "below", "in band") for p in searches)
    # a search pass that was not stopped early ended inside the band (the monitor's invariant)
    assert all(abs(p["share"] - target) <= 0.01 + 1e-9 for p in searches if p["outcome"] == "in band")
    assert not any(m._forward_hooks for m in model.modules())  # the masks are gone: the model is untouched


@pytest.mark.parametrize("rounds, target", [(1, 0.8), (3, 0.45)])
def test_greedy_planned_rounds_bound_the_oracle_calls(tiny, rounds, target):
    """The greedy prices every unit once per round: with R planned rounds it lands in the band after about R rounds
    (one more per extra round at the grid step), costing one call per unit that can still be cut per round plus
    one per round and one at the start; a more aggressive target prices bigger steps, not more rounds."""
    from prune.methods.pagcp.greedy import BudgetedGreedy

    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    cfg = PAGCPConfig(step=0.05, trip="mean")
    pol = BudgetedGreedy(model, groups, _distortion_oracle(model, x), TASKS, cfg,
                         FlopsBudget(target, tol=0.01, rounds=rounds, round_cut=None), progress=False)
    removed, decisions = pol.run()
    assert abs(_share(groups, removed) - target) <= 0.01
    assert rounds <= pol.rounds <= rounds + 2
    assert pol.oracle_calls <= 1 + pol.rounds * (len(groups.prunable) + 1)
    # each committed step was priced: its threshold column holds the price (loss growth per FLOP share removed)
    assert all(d.trials >= 1 for d in decisions if d.removed)


def test_planned_rounds_cap_the_share_one_round_removes(tiny):
    """Deep targets plan more pricing rounds (no round's goal removes more than round_cut of the FLOPs left), so
    the priced steps stay small; prune_to_flops runs that many."""
    from prune.methods.pagcp.greedy import plan_rounds

    assert plan_rounds(0.8, 3, 0.08) == 3 and plan_rounds(0.5, 3, 0.08) == 9 and plan_rounds(0.35, 3, 0.08) == 13
    assert plan_rounds(0.5, 3, None) == 3 and plan_rounds(0.5, 12, 0.08) == 12 and plan_rounds(1.0, 3, 0.08) == 3
    for r, t in ((3, 0.9), (9, 0.5)):  # every planned goal removes at most 8% of the FLOPs left
        assert t ** (1 / r) >= 0.92 - 1e-9
    with pytest.raises(ValueError, match="must be in"):
        plan_rounds(0.5, 3, 1.0)
    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    calls = {}
    for cut in (None, 0.08):
        res = prune_to_flops(model, groups, lambda c: _distortion_oracle(model, x), TASKS, PAGCPConfig(step=0.05, trip="mean"),
                             FlopsBudget(0.5, tol=0.01, rounds=3, round_cut=cut), progress=False, log=lambda s: None)
        assert abs(res.share - 0.5) <= 0.01
        calls[cut] = res.passes[0]["rounds"]
    assert calls[None] <= 5 and calls[0.08] >= 9


def test_greedy_journal_replays_and_refuses_other_settings(tiny, tmp_path):
    """A finished (or killed) greedy's journal is replayed by the same run without new pricing; a run with another
    target refuses it (PAGCP's journal checks, the greedy's fingerprint)."""
    from prune.methods.pagcp.greedy import BudgetedGreedy

    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    cfg, journal = PAGCPConfig(step=0.1, trip="mean"), Journal(tmp_path / "units_progress.json")
    budget = FlopsBudget(0.8, rounds=2, round_cut=None)
    first = BudgetedGreedy(model, groups, _distortion_oracle(model, x), TASKS, cfg, budget, progress=False,
                           journal=journal)
    removed, _ = first.run()
    again = BudgetedGreedy(model, groups, _distortion_oracle(model, x), TASKS, cfg, budget, progress=False,
                           journal=journal)
    assert again.run()[0] == removed and again.resumed_units == len(removed)
    assert again.oracle_calls == first.oracle_calls  # the journal's count: nothing priced again
    with pytest.raises(ValueError, match="written by a PAGCP pass with other settings"):
        BudgetedGreedy(model, groups, _distortion_oracle(model, x), TASKS, cfg, replace(budget, target=0.7),
                       progress=False, journal=journal).run()


def test_floor_and_top_up_never_undershoot(tiny):
    """A pass with a FLOPs floor never goes below it, and a top-up pass only removes more channels."""
    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cfg = PAGCPConfig(initial_rate=0.5, step=0.1, search="gallop", guard=False)
    first, _ = PAGCP(model, groups, _distortion_oracle(model, x), TASKS, cfg, progress=False, floor=0.9).run()
    assert _share(groups, first) >= 0.9 - 1e-9
    more, _ = PAGCP(model, groups, _distortion_oracle(model, x), TASKS, cfg, progress=False, floor=0.7,
                    start=first).run()
    assert _share(groups, more) >= 0.7 - 1e-9 and _share(groups, more) < _share(groups, first)
    assert all(set(first[g]) <= set(more.get(g, [])) for g in first)


def test_unreachable_target_is_refused(tiny):
    model, groups = tiny
    least = least_share(groups, 0.1)
    with pytest.raises(ValueError, match="cannot be reached by PAGCP"):
        prune_to_flops(model, groups, lambda c: None, TASKS, PAGCPConfig(step=0.1), FlopsBudget(least / 2),
                       progress=False, log=lambda s: None)


def test_trip_mean_lets_a_falling_task_offset_a_rising_one(tiny):
    """trip=any (the reference) stops at the first cut where one task's loss passes its threshold; trip=mean
    compares the tasks' mean loss ratio, so a task whose loss falls offsets one that rises."""
    model, groups = tiny
    g = groups.prunable[0]

    def oracle_for(policy):
        idx = [policy.masks.index[c] for c in g.classes]

        def losses():
            r = 1 - float(policy.masks.values[idx].mean())  # share of the unit's channels masked
            return np.array([1 + 4 * r, 1 - 3 * r, 1.0])
        return losses

    out = {}
    for trip in ("any", "mean"):
        pol = PAGCP(model, groups, None, TASKS, PAGCPConfig(initial_rate=0.05, step=0.1, trip=trip), units=[g],
                    progress=False)
        pol.task_losses = oracle_for(pol)
        removed, dec = pol.run()
        out[trip] = (len(removed.get(g.id, [])), dec[0])
    assert out["any"][0] < out["mean"][0]
    assert out["any"][1].tripped_by == "box"
    assert max(out["any"][1].loss_ratios) <= 1.05 + 1e-9
    assert np.mean(out["mean"][1].loss_ratios) <= 1.05 + 1e-9 < max(out["mean"][1].loss_ratios)


def test_flops_schedule_threshold_scales_with_the_flops_a_cut_removes(tiny):
    model, groups = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    pol = PAGCP(model, groups, _distortion_oracle(model, x), TASKS,
                PAGCPConfig(initial_rate=2.0, step=0.1, schedule="flops", guard=False), progress=False)
    removed, decisions = pol.run()
    base = estimate_flops(groups, {})[0]
    for d in decisions:
        if d.removed:  # threshold = rate x (share removed by the accepted cut, on the model as it was then)
            assert 0 < d.threshold <= 2.0 * d.flops_removed / base + 1e-6 and max(d.loss_ratios) <= 1 + d.threshold + 1e-9


# ---------------------------------------------------------------- compress.py: defaults, rounds, guards
def _run(args, tmp_path):
    return compress.main(["--no-latency", "--workers", "0", "--project", str(tmp_path / "runs")] + args)


def test_default_target_and_reference_flags():
    """No PAGCP budget given: the default target; the reference flags (CLI or recipe) keep reference thresholds."""
    from engine.compressor import check_args
    from utils.config import defaults

    d = defaults("compress")
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml"])
    check_args(opt)
    assert opt.target_flops == d["pagcp_target"]
    for argv in (["--initial_rate", "0.06"], ["--initial_thres", "6"], ["--cfg", "yolov5m_coco"]):
        opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", *argv])
        check_args(opt)
        assert opt.target_flops is None, argv
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--target-flops", "0.6"])
    check_args(opt)
    assert opt.target_flops == 0.6
    demo = compress.parse_opt([])
    check_args(demo)
    assert (demo.target_flops is None) == ("initial_rate" in (d.get("demo") or {}))


def test_target_mode_oracle_defaults_yield_to_given_flags():
    """With a FLOPs target PAGCP's oracle takes cfg target_oracle (batch BN, L2 saliency, mean trip) unless a
    flag sets it; without a target (the reference flags) the reference settings stay."""
    from engine.compressor import check_args
    from utils.config import defaults

    profile = defaults("compress")["target_oracle"]
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--target-flops", "0.7"])
    check_args(opt)
    assert all(getattr(opt, k) == v for k, v in profile.items())
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--target-flops", "0.7", "--oracle-bn", "running",
                              "--trip", "any"])
    check_args(opt)
    assert (opt.oracle_bn, opt.trip, opt.prunemethod) == ("running", "any", profile["prunemethod"])
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--initial_rate", "0.06", "--initial_thres", "6"])
    check_args(opt)
    d = defaults("compress")
    assert opt.target_flops is None and (opt.oracle_bn, opt.trip, opt.prunemethod) == (d["oracle_bn"], d["trip"],
                                                                                     d["prunemethod"])
    assert opt.reference_budget == profile  # the second pass's oracle: the reference pass only sets the FLOPs
    opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--initial_rate", "0.06", "--initial_thres", "6",
                              "--trip", "any"])
    check_args(opt)
    assert opt.reference_budget == {k: v for k, v in profile.items() if k != "trip"}  # a given flag wins
    for extra in (["--reference-protocol"], ["--target-flops", "0.7"]):
        opt = compress.parse_opt(["--weights", "w.pt", "--data", "d.yaml", "--initial_rate", "0.06", *extra])
        check_args(opt)
        assert opt.reference_budget is None


@pytest.mark.parametrize("extra, message", [
    (["--method", "l1", "--target-flops", "0.01"], "--target-flops 0.01 keeps under 0.1 of the base FLOPs"),
    (["--target-flops", "0.05"], "add --force"),
    (["--target-flops", "0.7", "--topk", "0.8"], "--topk drops units after the pass and would miss --target-flops"),
    (["--target-flops", "0.7", "--flops-tol", "0"], "--flops-tol must be in (0, 0.5)"),
    (["--target-flops", "0.7", "--pricing-cut", "1"], "--pricing-cut must be in (0, 1)"),
    (["--method", "l1", "--target-flops", "0.01", "--force", "--min-channels", "8"], "cannot be reached"),
])
def test_absurd_or_conflicting_budgets_are_refused(extra, message, shapes_yaml, tmp_path, capsys):
    rc = _run(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--epochs", "0", *extra], tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_rounds_spread_the_target(shapes_yaml, tmp_path):
    """--rounds 2 --target-flops 0.64: the first round aims at 0.8 of its input, the second at what is left of
    0.64 over the share the first reached (no compounding of the rounds' offsets); both land in the band."""
    from engine.compressor import round_target

    assert round_target(0.64, 2) == pytest.approx(0.8) and round_target(None, 2) is None
    assert round_target(0.5, 1, done=0.9) == pytest.approx(0.5 / 0.9) and round_target(0.5, 2, 0.4) == 1.0
    # 4 rounds to 0.5, each 0.01 over its own target: the fixed split would end at 0.851^4 = 0.524
    done = 1.0
    for k in range(4):
        done *= round_target(0.5, 4 - k, done) + 0.01 * (k < 3)
    assert abs(done - 0.5) < 1e-9
    rc = _run(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--epochs", "0",
               "--rounds", "2", "--target-flops", "0.64", "--calib-images", "4", "--search-images", "4",
               "--ratio-step", "0.1", "--bn-recalib", "0"], tmp_path)
    assert rc == 0
    s = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    shares = []
    for k, r in enumerate(s["rounds"]):
        info = r["pagcp"]
        aim = 0.8 if k == 0 else 0.64 / shares[0]
        assert info["target"] == pytest.approx(aim)
        final = [p for p in info["passes"] if p["kind"] != "search"][-1]
        assert abs(final["share"] - aim) <= 0.01 + 1e-9
        shares.append(final["share"])
    assert abs(np.prod(shares) - 0.64) <= 0.01 * 0.8 + 1e-9  # the last round absorbs the first one's offset
    assert abs(s["flops_ratio"] - 0.64) <= 0.03  # whole-model GFLOPs: BN/activations are not pruned
    units = (tmp_path / "runs" / "exp" / "round_1" / "units.txt").read_text()
    assert "PAGCP to FLOPs x0.800" in (tmp_path / "runs" / "exp" / "round_0" / "units.txt").read_text()
    assert f"PAGCP to FLOPs x{0.64 / shares[0]:.3f}" in units and f"({s['rounds'][1]['pagcp']['passes'][-1]['kind']})" in units


def test_collapse_warning_in_console_and_report(shapes_yaml, tmp_path, monkeypatch, caplog):
    """A run whose mAP50-95 falls below warn_map_share of the base ends with a WARNING line saying what to try."""
    import engine.compressor

    maps = iter([0.30, 0.05])
    real = engine.compressor._measure

    def measure(*a, **kw):
        out = real(*a, **kw)
        out["map50_95"] = next(maps)
        return out

    monkeypatch.setattr(engine.compressor, "_measure", measure)
    with caplog.at_level("WARNING"):
        rc = _run(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                   "--epochs", "0", "--method", "l1", "--ratio", "0.5"], tmp_path)
    assert rc == 0
    line = "WARNING: mAP50-95 fell to 0.050, 17% of the base model's 0.300 without fine-tuning"
    assert any(line in r.getMessage() for r in caplog.records)
    report = (tmp_path / "runs" / "exp" / "report.md").read_text()
    assert line in report and "fine-tune (--epochs 30 or more)" in report
    assert json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())["warnings"]


def test_warning_texts():
    from engine.safeguards import run_warnings

    opt = SimpleNamespace(epochs=3, initial_thres=5.0)
    d = {"warn_map_share": 0.5}
    s = {"data": "d.yaml", "base": {"map50_95": 0.3}, "after": {"map50_95": 0.2}, "flops_ratio": 0.8,
         "rounds": [{"round": 0, "pagcp": {"guard_stopped": -1, "units": 50, "target": 0.8, "loss_growth": 1.5}}]}
    assert run_warnings(s, opt, d) == []  # 67% of the base, loss within budget
    s["rounds"][0]["pagcp"]["loss_growth"] = 6.0
    s["after"]["map50_95"] = 0.1
    w = run_warnings(s, opt, d)
    assert len(w) == 2 and "after 3 fine-tune epoch(s)" in w[0] and "6.0x the unpruned model's" in w[1]
    s["rounds"][0]["pagcp"] = {"guard_stopped": 11, "units": 50}
    assert "after unit 12 of 50; the rest were not pruned" in run_warnings(s, opt, d)[1]
    s["base"]["map50_95"] = 0.0
    assert "accuracy cannot guide" in run_warnings(s, opt, d)[0]


@pytest.mark.assets
@need(YOLOV5N_PT)
def test_official_yolov5n_absurd_l1_target_warns_with_force(coco128_yaml, tmp_path, caplog):
    """l1 to 0.3 of the FLOPs on the official yolov5n (allowed: above 0.1) collapses mAP: the run says so."""
    with caplog.at_level("WARNING"):
        rc = _run(["--weights", str(YOLOV5N_PT), "--data", str(coco128_yaml), "--img", "160", "--epochs", "0",
                   "--method", "l1", "--target-flops", "0.3", "--bn-recalib", "0"], tmp_path)
    assert rc == 0
    assert any(r.getMessage().startswith("WARNING: mAP50-95 fell to") for r in caplog.records)
