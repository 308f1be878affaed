# AGPL-3.0 License
"""Network slimming policy: thresholds on BN |gamma|, coupled channels decide together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.loader import load_model
from prune import build_groups, estimate_flops
from prune.methods.slim import gamma_scores, percentile_threshold, plan_threshold, threshold_for_flops


@pytest.fixture(scope="module")
def sparse_model():
    torch.manual_seed(0)
    m = load_model("yolov5n.yaml", nc=3)
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        w = torch.rand(bn.num_features) + 0.1
        w[::3] = 1e-4  # every third channel "sparsified"
        bn.weight.data.copy_(w)
    return m, build_groups(m)


def test_threshold_removes_small_gammas_only(sparse_model):
    model, groups = sparse_model
    scores = gamma_scores(model, groups)
    plan = plan_threshold(groups, scores, 1e-3)
    assert plan
    for gid, pos in plan.items():
        assert (scores[gid][pos] < 1e-3).all()
    # residual classes hold several BNs: one large gamma keeps the channel
    g = next(g for g in groups.prunable if len(g.producers) > 1)
    assert np.isfinite(scores[g.id]).all()


def test_group_never_emptied(sparse_model):
    model, groups = sparse_model
    scores = gamma_scores(model, groups)
    plan = plan_threshold(groups, scores, 10.0, min_keep=2)  # everything below: keep the 2 strongest
    for g in groups.prunable:
        assert len(g) - len(plan.get(g.id, [])) == min(2, len(g))


def test_percentile_and_flops_target(sparse_model):
    model, groups = sparse_model
    scores = gamma_scores(model, groups)
    t = percentile_threshold(scores, 0.3)
    assert 0 < t < 1.2
    thr, plan, frac = threshold_for_flops(groups, scores, 0.6)
    assert frac <= 0.6 and estimate_flops(groups, plan)[1] / estimate_flops(groups, {})[0] == pytest.approx(frac)
    with pytest.raises(ValueError, match="cannot be reached"):
        threshold_for_flops(groups, scores, 1e-5)
