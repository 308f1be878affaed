# AGPL-3.0 License
"""Criterion methods: l1, l2, l1_largest, l2_largest, bn, bnl1, random, taylor (prune/importance.py scores each
channel) with one budget: a FLOPs target (--target-flops), a share of channels (--ratio, per group or --global),
or a rate per layer (--pruning-params, seed 002's layer plans, prune/sensitivity.py)."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from data.datasets import build_val_loader
from models.loss import build_criterion
from prune.groups import GroupSet
from prune.importance import get_criterion
from prune.methods.base import Plan, PlanContext
from prune.plans import plan_global, plan_uniform, solve_ratio_for_flops
from prune.sensitivity import layer_plan
from utils import distributed as ddp
from utils.general import UsageError

CRITERIA = ("l1", "l2", "l1_largest", "l2_largest", "bn", "bnl1", "random", "taylor")


def plan_by_scores(groups: GroupSet, scores: dict[int, np.ndarray], ctx: PlanContext) -> Plan:
    """Channels of the lowest `scores` go, to the budget in ctx.settings: --pruning-params layer rates, the
    round's FLOPs target, or --ratio (per group, or one ranking with --global).

    Returns:
        Plan (info empty)."""
    s = ctx.settings
    kw = dict(divisor=s.divisor, min_keep=s.min_channels)
    if s.pruning_params is not None:
        return Plan(layer_plan(groups, scores, s.pruning_params, **kw))
    planner = plan_global if s.global_ranking else plan_uniform
    if s.target_flops is not None:  # over several rounds, each round takes an equal share of the reduction
        return Plan(solve_ratio_for_flops(groups, planner, ctx.round_target, scores=scores, **kw)[0])
    return Plan(planner(groups, scores=scores, ratio=s.ratio, **kw))


def plan(model: nn.Module, groups: GroupSet, ctx: PlanContext) -> Plan:
    """A criterion method (ctx.settings.method names it): score every prunable group, then `plan_by_scores`.
    taylor first accumulates the detection loss's gradients over --calib-images training images.

    Returns:
        Plan (info empty)."""
    s = ctx.settings
    if s.method == "taylor":
        accumulate_gradients(model, ctx)
    crit = get_criterion(s.method)
    scores = {g.id: crit(model, g, seed=s.seed) for g in groups.prunable}
    return plan_by_scores(groups, scores, ctx)


def accumulate_gradients(model: nn.Module, ctx: PlanContext) -> None:
    """Gradients of the detection loss over --calib-images training images (for the taylor criterion), left in
    the parameters' .grad."""
    s = ctx.settings
    try:
        criterion = build_criterion(model, None, s.imgsz)
    except ImportError as e:
        raise UsageError("--method taylor needs the training loss (models/loss.py), not available") from e
    with ddp.zero_first():  # the label cache
        loader = build_val_loader(ctx.data, "train", s.imgsz, min(s.batch_size, 16), 32, s.workers)
    model.train()
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in loader:
        img = batch["img"].to(ctx.device).float() / 255
        loss, _ = criterion(model(img), batch)
        loss.backward()
        seen += img.shape[0]
        if seen >= s.calib_images:
            break
    model.eval()
