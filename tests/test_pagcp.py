# AGPL-3.0 License
"""PAGCP policy on the engine, with a deterministic stand-in oracle (per-task output distortion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.loader import load_model
from prune import apply_removal, build_groups, estimate_flops
from prune.methods.pagcp.reference import PAGCP, PAGCPConfig, solve_lambda


def test_solve_lambda_matches_reference_example():
    # REFERENCE.md: rate 0.06, thres 6, L = 51 -> lambda ~ 0.977
    lam = solve_lambda(0.06, 6.0, 51)
    assert abs(lam - 0.977) < 0.002
    assert abs(np.prod([1 + 0.06 * lam**i for i in range(51)]) - 6.0) < 1e-6


def _oracle(model, x):
    """box / obj / cls 'losses': 1 + relative squared distance of each part of the raw head maps to the
    unpruned model's (a stand-in for the detection losses: it grows as channels are removed)."""
    parts = [slice(0, 4), slice(4, 5), slice(5, None)]
    with torch.no_grad():
        ref = [t.clone() for t in model(x)[1]]
    scale = [sum(float(r[..., s].var()) for r in ref) for s in parts]

    def losses():
        with torch.no_grad():
            out = model(x)[1]
        return np.array([1.0 + sum(float((o[..., s] - r[..., s]).pow(2).mean()) for o, r in zip(out, ref)) / v
                         for s, v in zip(parts, scale)])

    return losses


@pytest.fixture(scope="module")
def model_and_groups():
    torch.manual_seed(0)
    m = load_model("yolov5n.yaml", nc=3).eval()
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # give channels distinct roles
        bn.weight.data.uniform_(0.2, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return m, build_groups(m)


@pytest.mark.parametrize("rate", [0.002, 0.05])
def test_pagcp_threshold_controls_how_much_is_pruned(model_and_groups, rate):
    model, groups = model_and_groups
    x = torch.rand(1, 3, 32, 32)
    policy = PAGCP(model, groups, _oracle(model, x), ["box", "obj", "cls"], PAGCPConfig(initial_rate=rate, step=0.2),
                   progress=False)
    removed, decisions = policy.run()
    assert len(decisions) == len(groups.prunable) and policy.oracle_calls > len(decisions)
    frac = estimate_flops(groups, removed)[1] / estimate_flops(groups, {})[0]
    # every decision respects the oracle: the accepted loss ratios stay within the unit's threshold
    for d in decisions:
        if d.removed:
            assert max(d.loss_ratios) <= 1 + d.threshold + 1e-9
    test_pagcp_threshold_controls_how_much_is_pruned.fracs[rate] = frac
    if len(test_pagcp_threshold_controls_how_much_is_pruned.fracs) == 2:
        f = test_pagcp_threshold_controls_how_much_is_pruned.fracs
        assert f[0.05] < f[0.002] <= 1.0  # a looser threshold prunes more
    # masks were cleared: the model is untouched until the plan is applied
    pruned = apply_removal(__import__("copy").deepcopy(model), groups, removed)
    assert pruned(x)[0].shape == model(x)[0].shape


test_pagcp_threshold_controls_how_much_is_pruned.fracs = {}


def test_topk_keeps_only_the_best_units(model_and_groups):
    model, groups = model_and_groups
    x = torch.rand(1, 3, 32, 32)
    full = PAGCP(model, groups, _oracle(model, x), ["box", "obj", "cls"], PAGCPConfig(initial_rate=0.05, step=0.2),
                 progress=False).run()[1]
    top = PAGCP(model, groups, _oracle(model, x), ["box", "obj", "cls"], PAGCPConfig(initial_rate=0.05, step=0.2, topk=0.5),
                progress=False).run()[1]
    n_full = sum(1 for d in full if d.removed)
    n_top = sum(1 for d in top if d.removed)
    assert n_top == int(n_full * 0.5)


@pytest.mark.parametrize("first_trip", range(0, 20))
def test_gallop_search_finds_the_linear_answer_on_monotone_losses(first_trip):
    """Wherever the first tripping cut is on a 19-cut grid (19: never trips), galloping + bisection keeps the
    same cut as the reference's linear scan, in O(log) oracle calls."""
    grid, calls = 19, {"linear": [], "gallop": []}
    for name, search in (("linear", PAGCP._search_linear), ("gallop", PAGCP._search_gallop)):
        def trips(i, name=name):
            calls[name].append(i)
            return i >= first_trip, np.array([float(i)])

        best, loss = search(grid, trips)
        assert best == first_trip - 1 and (loss is None if best < 0 else loss[0] == best)
    assert len(calls["linear"]) == min(first_trip + 1, grid)
    assert len(calls["gallop"]) <= 2 * (first_trip + 1).bit_length() + 1


def test_gallop_search_on_a_model_matches_linear(model_and_groups):
    """On the stand-in oracle (losses grow with the cut) both searches make the same decisions."""
    m, groups = model_and_groups
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = {}
    for search in ("linear", "gallop"):
        cfg = PAGCPConfig(initial_rate=0.05, initial_thres=3.0, exp=True, step=0.1, search=search)
        policy = PAGCP(m, groups, _oracle(m, x), ["box", "obj", "cls"], cfg, progress=False)
        removed, decisions = policy.run()
        out[search] = (removed, policy.oracle_calls, [d.tripped_by for d in decisions])
    assert out["gallop"][0] == out["linear"][0] and out["gallop"][2] == out["linear"][2]
    assert out["gallop"][1] <= out["linear"][1]


def test_loss_ratio_of_a_task_without_signal_is_neutral():
    """A 1-class YOLOv5 model has no class loss (0 before and after every cut): its ratio must be 1, not 0, or the
    tasks' mean prices every cut below 1 (a gain) and a FLOPs-target greedy takes the deepest cuts it can."""
    from prune.methods.pagcp.reference import loss_ratios

    rel = loss_ratios(np.array([0.06, 0.03, 0.0]), np.array([0.05, 0.03, 0.0]))
    np.testing.assert_allclose(rel, [1.2, 1.0, 1.0])
    assert rel.mean() > 1  # the cut costs loss: its price stays positive
    assert loss_ratios(np.array([0.1]), np.array([0.0]))[0] > 1e6  # a loss appearing from nothing still counts


def test_journal_of_an_older_version_is_refused_in_one_line(tmp_path):
    """A resume journal written before the format was versioned (or by another version) is refused with a
    UsageError naming the problem and the remedy, not half-read."""
    import json

    from prune.methods.pagcp.journal import FORMAT, Journal
    from utils.general import UsageError

    f = tmp_path / "units_progress.json"
    f.write_text(json.dumps({"config": {}, "decisions": []}))  # the pre-versioned layout
    with pytest.raises(UsageError, match="written by an older version of compress.py .* start the run again without "
                                         "--resume") as e:
        Journal(f).load()
    assert "\n" not in str(e.value)
    Journal(f).save({"decisions": []})
    assert Journal(f).load() == {"format": FORMAT, "decisions": []}
    assert Journal(tmp_path / "none.json").load() is None
