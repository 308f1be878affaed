# AGPL-3.0 License
"""One-shot norm-style pruning policies: the same ratio in every group (uniform) or one ranking
across all groups with per-group normalized scores (global), optionally solved for a FLOPs target."""

from __future__ import annotations

import numpy as np

from prune.groups import GroupSet
from prune.surgery import estimate_flops, keep_count


def plan_uniform(groups: GroupSet, scores: dict[int, np.ndarray], ratio: float, divisor: int = 1,
                 min_keep: int = 1) -> dict[int, list[int]]:
    removed = {}
    for g in groups.prunable:
        n = len(g)
        keep = keep_count(n, int(round(ratio * n)), divisor, min_keep)
        if keep < n:
            removed[g.id] = np.argsort(scores[g.id], kind="stable")[: n - keep].tolist()
    return removed


def plan_global(groups: GroupSet, scores: dict[int, np.ndarray], ratio: float, divisor: int = 1,
                min_keep: int = 1) -> dict[int, list[int]]:
    """Remove the `ratio` share of all prunable channels with the lowest group-normalized scores."""
    entries = []
    for g in groups.prunable:
        s = scores[g.id].astype(np.float64)
        norm = np.abs(s).mean() or 1.0
        entries += [(v / norm, g.id, pos) for pos, v in enumerate(s)]
    entries.sort(key=lambda e: e[0])
    total = len(entries)
    want = int(round(ratio * total))
    count: dict[int, list[int]] = {}
    sizes = {g.id: len(g) for g in groups.prunable}
    for _, gid, pos in entries:
        if want <= 0:
            break
        cur = count.setdefault(gid, [])
        if sizes[gid] - len(cur) - 1 < max(min_keep, 1):
            continue
        cur.append(pos)
        want -= 1
    removed = {}
    for gid, pos in count.items():  # round the kept count up to the divisor: drop the best of the removed
        keep = keep_count(sizes[gid], len(pos), divisor, min_keep)
        n_rm = sizes[gid] - keep
        if n_rm > 0:
            removed[gid] = pos[:n_rm]
    return removed


def solve_ratio_for_flops(groups: GroupSet, planner, target: float, tol: float = 0.002, divisor: int = 1,
                          min_keep: int = 1, scores: dict[int, np.ndarray] | None = None, **kw):
    """The plan of `planner` (plan_uniform / plan_global) whose conv FLOPs share is closest to `target`, found by
    bisecting the ratio (see solve_for_flops for the rounding to `divisor`). Returns (removed, achieved share);
    ValueError when no ratio reaches the target."""
    def raw(ratio: float) -> dict[int, list[int]]:
        return planner(groups, ratio=ratio, divisor=1, min_keep=min_keep, scores=scores, **kw)

    removed, frac, _ = solve_for_flops(groups, raw, target, scores, divisor, min_keep, 0.0, 0.99, tol=tol)
    return removed, frac


def _kept(groups: GroupSet, removed: dict[int, list[int]]) -> dict[int, int]:
    return {g.id: len(g) - len(removed.get(g.id, ())) for g in groups.prunable}


def _rounded_keeps(groups: GroupSet, kept: dict[int, int], divisor: int, min_keep: int) -> tuple[dict, dict]:
    """Each group's kept count rounded up and down to a multiple of `divisor` (down never below
    max(divisor, min_keep): a group is never emptied; up never above the group's size)."""
    up, down = {}, {}
    for g in groups.prunable:
        k = kept[g.id]
        up[g.id] = keep_count(len(g), len(g) - k, divisor, min_keep)
        d = k // divisor * divisor
        down[g.id] = d if d >= max(divisor, min_keep, 1) else up[g.id]
    return up, down


def _plan_from_keeps(groups: GroupSet, scores: dict[int, np.ndarray], keeps: dict[int, int]) -> dict[int, list[int]]:
    """The lowest-scored channels of each group go (the order every planner here removes them in)."""
    n = {g.id: len(g) for g in groups.prunable}
    return {gid: np.argsort(scores[gid], kind="stable")[: n[gid] - k].tolist() for gid, k in keeps.items()
            if k < n[gid]}


def solve_for_flops(groups: GroupSet, raw_plan, target: float, scores: dict[int, np.ndarray], divisor: int = 1,
                    min_keep: int = 1, lo: float = 0.0, hi: float = 0.99, iters: int = 30, tol: float = 0.002,
                    xtol: float = 1e-4):
    """Solve a planner's knob for a conv FLOPs share `target` (a share of estimate_flops' base), with the channel
    divisor inside the search. Returns (removed, achieved share, knob).

    raw_plan(x) is the divisor-1 removal plan at knob x in [lo, hi] (a ratio, a BN threshold...), removing more as
    x grows; the bisection stops when the knob is known within `xtol` or the share is within `tol` below target.
    divisor 1: the largest-FLOPs plan at or below the target (bisection on x).
    divisor > 1: rounding every group's kept count up (prune.surgery.keep_count) moves the share far from the
    target, because groups of one size cross a multiple together. So each x's plan rounds every group to its nearest multiple, x is bisected on that plan's share,
    and between the plans just above and just below the target the groups that differ are moved one at a time,
    largest FLOPs step first that does not pass below the target; whichever plan lands closest to the target,
    from either side, is returned. The removed channels are the lowest-scored of each group."""
    base, _ = estimate_flops(groups, {})

    def share(plan) -> float:
        return estimate_flops(groups, plan)[1] / base

    def plan_at(x: float) -> tuple[dict, float]:
        raw = raw_plan(x)
        if divisor <= 1:
            plan = raw
        else:
            kept = _kept(groups, raw)
            up, down = _rounded_keeps(groups, kept, divisor, min_keep)
            near = {gid: up[gid] if up[gid] - kept[gid] <= kept[gid] - down[gid] else down[gid] for gid in kept}
            plan = _plan_from_keeps(groups, scores, near)
        return plan, share(plan)

    above, below = plan_at(lo), None  # (plan, share, x) with share > target, and <= target
    above = (*above, lo)
    if above[1] <= target:
        below = above
    for _ in range(iters):
        if below is not None and (hi - lo < xtol or target - below[1] < tol):
            break
        mid = (lo + hi) / 2
        plan, frac = plan_at(mid)
        if frac <= target:
            below, hi = (plan, frac, mid), mid
        else:
            above, lo = (plan, frac, mid), mid
    if below is None:
        plan, frac = plan_at(hi)
        if frac > target:
            raise ValueError(f"--target-flops {target:.3f} cannot be reached: the most this structure allows is "
                             f"{frac:.3f} of the base FLOPs")
        below = (plan, frac, hi)
    if divisor <= 1 or above[1] <= target:
        return below
    # between the two neighbouring plans: move the groups that differ one by one, largest step first
    cur = _kept(groups, above[0])
    target_keeps = _kept(groups, below[0])
    best = min((above, below), key=lambda c: abs(c[1] - target))
    steps = []
    for gid in (g for g in cur if target_keeps[g] < cur[g]):
        steps.append((share(_plan_from_keeps(groups, scores, {**cur, gid: target_keeps[gid]})), gid))
    for _, gid in sorted(steps):  # smallest share after the step = largest FLOPs step first
        trial = {**cur, gid: target_keeps[gid]}
        plan = _plan_from_keeps(groups, scores, trial)
        frac = share(plan)
        if abs(frac - target) < abs(best[1] - target):
            best = (plan, frac, below[2])
        if frac >= target:
            cur = trial
    return best


def min_flops_share(groups: GroupSet, divisor: int = 1, min_keep: int = 1) -> float:
    """The least share of the base FLOPs any plan can reach: every prunable group cut to its minimum."""
    base, _ = estimate_flops(groups, {})
    floor = {}
    for g in groups.prunable:
        n_rm = len(g) - keep_count(len(g), len(g), divisor, min_keep)
        if n_rm > 0:
            floor[g.id] = list(range(n_rm))
    return estimate_flops(groups, floor)[1] / base
