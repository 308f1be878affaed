# AGPL-3.0 License
"""Network slimming policy (seed 004): after sparsity training, remove channels whose BN scale |gamma|
falls below a global threshold — absolute (`threshold`), the `percent` percentile of all gammas, or the
threshold that reaches a FLOPs target. Coupled channels decide together: a channel class goes only when
every BN scale in it is below the threshold (its score is the max |gamma| over its BNs). A group whose
channels would all go keeps its strongest ones (at least `min_keep`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from prune.groups import GroupSet
from prune.methods.base import Plan, PlanContext
from prune.methods.criteria import plan_by_scores
from prune.patterns import ModuleMatcher
from prune.plans import solve_for_flops
from prune.surgery import keep_count


def gamma_scores(model: nn.Module, groups: GroupSet) -> dict[int, np.ndarray]:
    """Per prunable group: max |gamma| over the BatchNorms of each channel (inf where a channel has none)."""
    modules = dict(model.named_modules())
    scores = {}
    for g in groups.prunable:
        s = np.full(len(g), -np.inf)
        for i, ms in enumerate(g.members):
            for m in ms:
                bn = modules.get(m.module)
                if m.param == "weight" and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    s[i] = max(s[i], float(bn.weight.detach()[m.index].abs()))
        scores[g.id] = np.where(np.isinf(s), np.inf, s)  # no BN: slimming has no evidence, keep it
    return scores


def plan_threshold(groups: GroupSet, scores: dict[int, np.ndarray], threshold: float, divisor: int = 1,
                   min_keep: int = 1) -> dict[int, list[int]]:
    removed = {}
    for g in groups.prunable:
        s = scores[g.id]
        below = np.flatnonzero(s < threshold)
        keep = keep_count(len(g), len(below), divisor, min_keep)
        if keep < len(g):
            order = np.argsort(s, kind="stable")
            removed[g.id] = sorted(order[: len(g) - keep].tolist())
    return removed


def percentile_threshold(scores: dict[int, np.ndarray], percent: float) -> float:
    allv = np.concatenate([s[np.isfinite(s)] for s in scores.values()])
    if not len(allv):
        raise ValueError("no BatchNorm scales among the prunable channels: slimming needs BN layers")
    return float(np.percentile(allv, percent * 100 if percent <= 1 else percent))


def threshold_for_flops(groups: GroupSet, scores: dict[int, np.ndarray], target: float, divisor: int = 1,
                        min_keep: int = 1) -> tuple[float, dict[int, list[int]], float]:
    """The gamma threshold whose plan keeps the share of base conv FLOPs closest to `target` (at or below it with
    divisor 1): bisection over the sorted gammas, rounding to `divisor` inside the search
    (prune.plans.solve_for_flops). Returns (threshold, removed, share)."""
    allv = np.unique(np.concatenate([s[np.isfinite(s)] for s in scores.values()]))

    def threshold(x: float) -> float:  # x in [0, 1] -> just above the x-quantile gamma (every gamma at x = 1)
        return float(allv[min(int(x * len(allv)), len(allv) - 1)]) + (1e-12 if x < 1 else 1.0)

    try:
        plan, frac, x = solve_for_flops(groups, lambda x: plan_threshold(groups, scores, threshold(x), 1, min_keep),
                                        target, scores, divisor, min_keep, 0.0, 1.0, iters=64, tol=0.0,
                                        xtol=0.5 / len(allv))
    except ValueError as e:
        raise ValueError(f"target FLOPs {target:.3f} cannot be reached by slimming: {str(e).split(': ', 1)[1]}") \
            from None
    return threshold(x), plan, frac


class SparsityPenalty:
    """Network-slimming sparsity training: the subgradient of sl·Σ|γ| over BatchNorm scales, added to the
    gradients before each optimizer step. `sl` is scaled like weight decay (by the images per step / nbs)
    so one setting works at any batch size; BNs whose module name matches an `ignore` pattern are skipped."""

    def __init__(self, model: nn.Module, sl: float, ignore: list[str] | tuple = (), images_per_step: int = 64,
                 nbs: int = 64):
        """`ignore`: module-name patterns (prune.patterns: a module covers its submodules); a pattern that
        matches no BatchNorm raises UsageError. `self.ignored` lists the BNs left unpenalized."""
        self.sl = sl * images_per_step / nbs
        matcher = ModuleMatcher(ignore, "--sparsity-ignore", "BatchNorm layer")
        bns = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        self.ignored = [n for n, _ in bns if matcher.match(n)]
        self.bns = [(n, m) for n, m in bns if n not in self.ignored]
        matcher.check(n for n, _ in bns)

    def apply(self) -> None:
        for _, bn in self.bns:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=self.sl)

    def gammas(self) -> np.ndarray:
        if not self.bns:
            return np.zeros(0)
        return torch.cat([bn.weight.detach().abs().flatten().cpu() for _, bn in self.bns]).numpy()


def plan(model: nn.Module, groups: GroupSet, ctx: PlanContext) -> Plan:
    """--method slim: BN |gamma| scores, cut below --slim-threshold, below the --slim-percent percentile, at the
    threshold reaching the round's FLOPs target, or by --ratio / --pruning-params like a criterion.

    Returns:
        Plan (info empty)."""
    s = ctx.settings
    kw = dict(divisor=s.divisor, min_keep=s.min_channels)
    scores = gamma_scores(model, groups)
    if s.slim_threshold is not None or s.slim_percent is not None:
        t = s.slim_threshold if s.slim_threshold is not None else percentile_threshold(scores, s.slim_percent)
        ctx.log(f"slimming threshold |gamma| < {t:.4g}")
        return Plan(plan_threshold(groups, scores, t, **kw))
    if s.target_flops is not None:
        return Plan(threshold_for_flops(groups, scores, s.target_flops, **kw)[1])
    return plan_by_scores(groups, scores, ctx)
