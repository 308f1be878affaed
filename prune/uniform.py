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


def solve_ratio_for_flops(groups: GroupSet, planner, target: float, tol: float = 0.002, **kw):
    """Largest-FLOPs plan whose FLOPs are <= target x base: bisect the ratio. Returns (removed, achieved)."""
    base, _ = estimate_flops(groups, {})
    lo, hi = 0.0, 0.99
    best = planner(groups, ratio=0.0, **kw)
    best_frac = 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        plan = planner(groups, ratio=mid, **kw)
        frac = estimate_flops(groups, plan)[1] / base
        if frac <= target:
            best, best_frac, hi = plan, frac, mid
        else:
            lo = mid
        if hi - lo < 1e-4 or (best_frac <= target and target - best_frac < tol):
            break
    if best_frac > target:
        raise ValueError(
            f"--target-flops {target:.3f} cannot be reached: the most this structure allows is "
            f"{estimate_flops(groups, planner(groups, ratio=0.99, **kw))[1] / base:.3f} of the base FLOPs"
        )
    return best, best_frac


def min_flops_share(groups: GroupSet, divisor: int = 1, min_keep: int = 1) -> float:
    """The least share of the base FLOPs any plan can reach: every prunable group cut to its minimum."""
    base, _ = estimate_flops(groups, {})
    floor = {}
    for g in groups.prunable:
        n_rm = len(g) - keep_count(len(g), len(g), divisor, min_keep)
        if n_rm > 0:
            floor[g.id] = list(range(n_rm))
    return estimate_flops(groups, floor)[1] / base
