# AGPL-3.0 License
"""PAGCP to a FLOPs target (`compress.py --target-flops F`): the threshold scale is found by search.

The reference PAGCP flags bound the *loss growth* and the FLOPs a pass ends at are whatever those bounds
allow (docs/benchmarks/pagcp.md). Users think in FLOPs. The
policy (prune/methods/pagcp/reference.py) is unchanged here: every per-unit threshold is proportional to `initial_rate`, so
`initial_rate` is one scale that moves the end point, and the pass's FLOPs fall as it grows. This module
searches that scale:

1. Search passes, cheap: the same pass with the oracle on the first `search_images` calibration images
   (`--search-images`), bisecting log(rate). A search pass stops as soon as its outcome is known: when its FLOPs
   share falls below F - tol (FLOPs only fall during a pass: too aggressive), or when the units not visited yet,
   even all cut to the grid's largest ratio, can no longer bring it to F + tol (too timid). A pass that is not
   stopped has therefore ended inside the band. From the starting rate the scale is multiplied or divided by 4
   until the target is bracketed, then bisected (geometric mean) until a pass lands in the band or
   `max_passes` passes were run.
2. The final pass: the full calibration set at the rate found, with a FLOPs floor at F - tol that no cut may
   cross (so a final pass never undershoots; the unit that meets the floor gets the largest cut above it).
3. Top-up: when the final pass ends above F + tol (its full-size oracle judged more strictly than the cheap
   one), further passes start from its result with the rate doubled each time, only removing more channels,
   with the same floor, until the share is in the band (at most `max_topups`). No undo step is needed: the floor
   keeps every pass at or above F - tol.

The kept-channel rounding (`--divisor`, `--min-channels`) is applied to every cut tried, so the share reached is
the share after rounding. Shares are of the conv/linear FLOPs at the traced image size (prune.surgery.estimate_flops),
which is what the band is about; the whole model's GFLOPs share that compress.py reports differs slightly
(BN, activations and the head's decode are not pruned).

Cost: reported as oracle calls per pass; in image-forwards, search-pass calls x search_images + final and top-up
calls x calibration images (measurements: docs/benchmarks/pagcp.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from prune.groups import Group, GroupSet
from prune.methods.pagcp.config import FlopsBudget, PAGCPConfig
from prune.methods.pagcp.greedy import BudgetedGreedy
from prune.methods.pagcp.journal import Journal
from prune.methods.pagcp.reference import PAGCP, UnitDecision
from prune.surgery import estimate_flops, keep_count


@dataclass
class BudgetResult:
    removed: dict[int, list[int]]
    decisions: list[UnitDecision]
    share: float  # conv FLOPs share reached
    rate: float  # the scale (initial_rate) of the final pass
    passes: list[dict] = field(default_factory=list)  # every pass: kind, rate, share, outcome, calls, images
    policy: PAGCP | None = None  # the final pass's policy (lambda, losses, guard)

    @property
    def oracle_calls(self) -> int:
        return sum(p["calls"] for p in self.passes)

    @property
    def image_forwards(self) -> int:
        return sum(p["calls"] * p["images"] for p in self.passes)


def first_images(batches: list[dict], n: int) -> list[dict]:
    """The leading batches that hold at least n images (the search passes' calibration subset)."""
    out, seen = [], 0
    for b in batches:
        if seen >= n:
            break
        out.append(b)
        seen += int(b["img"].shape[0])
    return out


def prune_to_flops(model, groups: GroupSet, make_oracle: Callable[[bool], Callable], tasks: list[str],
                   cfg: PAGCPConfig, budget: FlopsBudget, units: list[Group] | None = None, progress: bool = True,
                   journal: Journal | None = None, log: Callable[[str], None] = print) -> BudgetResult:
    """PAGCP whose threshold scale is searched so that the pass ends at budget.target +- budget.tol.

    make_oracle(cheap) returns the oracle of the search passes (cheap=True) or of the final pass; oracles that
    count `images` per call are accounted for in BudgetResult.passes. journal: the final pass's progress file
    (prune.methods.pagcp.reference.PAGCP); the search passes are recorded beside it (flops_search.json) and replayed on resume.
    Raises ValueError when no pass can reach the band (every unit cut to the grid's largest ratio stays above it).
    """
    f, half = budget.target, budget.tol
    if budget.mode not in ("greedy", "search"):
        raise ValueError(f"unknown FLOPs budget mode '{budget.mode}': greedy or search")
    if cfg.topk < 1:
        raise ValueError("--topk drops units after the pass and would leave the FLOPs target: use it without "
                         "--target-flops")
    units = units if units is not None else groups.prunable
    if budget.cost is not None and budget.mode != "greedy":
        raise ValueError("a latency target is priced by the budgeted greedy only: use --flops-budget greedy")
    least = least_share(groups, cfg.step, cfg.divisor, cfg.min_keep, units, budget.cost)
    if least > f + half:
        what = f"the latency share {f:.3f}" if budget.cost is not None else f"--target-flops {f}"
        raise ValueError(f"{what} cannot be reached by PAGCP: every unit cut to the largest ratio "
                         f"{cfg.ratios()[-1]:.2f} (--divisor {cfg.divisor}, --min-channels {cfg.min_keep}) leaves "
                         f"{least:.3f} of the {'latency' if budget.cost is not None else 'FLOPs'}")
    if budget.mode == "greedy":
        oracle = make_oracle(budget.greedy_cheap)
        pol = BudgetedGreedy(model, groups, oracle, tasks, cfg, budget, units=units, progress=progress,
                             journal=journal)
        removed, decisions = pol.run()
        share = _share(groups, removed, budget.cost)
        p = {"kind": "greedy", "rate": None, "share": share, "outcome": _outcome(share, f, half),
             "calls": pol.oracle_calls, "images": int(getattr(oracle, "images", 0)), "rounds": pol.rounds}
        log(f"PAGCP budgeted {pass_line(p)}")
        return BudgetResult(removed, decisions, share, float("nan"), [p], pol)
    search_file = journal.sibling("flops_search.json") if journal else None
    fingerprint = {"budget": asdict(budget), "config": {**asdict(cfg), "initial_rate": None}, "tasks": list(tasks),
                   "units": [[g.id, len(g)] for g in units]}
    passes: list[dict] = _load_search(search_file, fingerprint)
    replayed = len(passes)
    cheap = None

    def search_pass(rate: float) -> dict:
        nonlocal cheap
        cheap = cheap or make_oracle(True)

        def monitor(share: float, least_left: float) -> bool:
            return share < f - half or least_left > f + half

        pol = PAGCP(model, groups, cheap, tasks, replace(cfg, initial_rate=rate, guard=False), units=units,
                    progress=False, monitor=monitor)
        removed, visited = pol.run()
        share = _share(groups, removed)
        outcome = "below" if share < f - half else "above" if pol.aborted else "in band"
        return {"kind": "search", "rate": rate, "share": share, "outcome": outcome, "calls": pol.oracle_calls,
                "images": int(getattr(cheap, "images", 0)), "units_visited": len(visited)}

    lo = hi = None  # rates known to end above (too timid) / below (too aggressive) the band
    for p in passes:
        lo, hi = _bracket(p, lo, hi)
    rate = passes[-1]["rate"] if passes else cfg.initial_rate
    found = next((p["rate"] for p in passes if p["outcome"] == "in band"), None)
    while found is None and len(passes) < budget.max_passes:
        if passes:
            rate = _next_rate(lo, hi, budget.factor)
        p = search_pass(rate)
        passes.append(p)
        _save_search(search_file, fingerprint, passes)
        log(f"PAGCP FLOPs {pass_line(p)} (pass {len(passes)})")
        lo, hi = _bracket(p, lo, hi)
        if p["outcome"] == "in band":
            found = rate
    if found is None:
        found = _next_rate(lo, hi, budget.factor)
    if replayed:
        log(f"PAGCP FLOPs search: {replayed} search passes replayed from {search_file.name}")

    # final pass on the full calibration set, never below the floor; then top-ups that only remove more
    full = make_oracle(False)

    def full_pass(kind: str, rate: float, start: dict | None) -> tuple[PAGCP, dict, list, float]:
        pol = PAGCP(model, groups, full, tasks, replace(cfg, initial_rate=rate, guard=False), units=units,
                    progress=progress, journal=None if start else journal,
                    floor=f - half, start=start)
        removed, decisions = pol.run()
        share = _share(groups, removed)
        passes.append({"kind": kind, "rate": rate, "share": share, "outcome": _outcome(share, f, half),
                       "calls": pol.oracle_calls, "images": int(getattr(full, "images", 0))})
        log(f"PAGCP FLOPs {pass_line(passes[-1])}")
        return pol, removed, decisions, share

    rate = found
    final, removed, decisions, share = full_pass("final", rate, None)
    for _ in range(budget.max_topups):
        if share <= f + half:
            break
        rate *= 2
        final, removed, decisions, share = full_pass("top-up", rate, removed)
    return BudgetResult(removed, decisions, share, rate, passes, final)


def least_share(groups: GroupSet, step: float = 0.05, divisor: int = 1, min_keep: int = 1,
                units: list[Group] | None = None, cost: Callable | None = None) -> float:
    """The least share (conv FLOPs, or `cost`'s measure) one PAGCP pass can reach: every unit cut to the grid's
    largest ratio."""
    top = PAGCPConfig(step=step).ratios()[-1]
    removed = {}
    for g in units if units is not None else groups.prunable:
        n = len(g) - keep_count(len(g), int(round(top * len(g))), divisor, min_keep)
        if n > 0:
            removed[g.id] = list(range(n))
    return _share(groups, removed, cost)


def pass_line(p: dict) -> str:
    """One line per pass for logs and units.txt."""
    rate = "" if p.get("rate") is None else f"rate {p['rate']:.4g} "
    rounds = f" in {p['rounds']} rounds" if p.get("rounds") is not None else ""
    return (f"{p['kind']} {rate}-> share {p['share']:.3f} ({p['outcome']}){rounds}, {p['calls']} oracle calls on "
            f"{p['images']} images")


def _share(groups: GroupSet, removed: dict[int, list[int]], cost: Callable | None = None) -> float:
    before, after = (cost or estimate_flops)(groups, removed)
    return after / before


def _outcome(share: float, f: float, half: float) -> str:
    return "below" if share < f - half - 1e-9 else "above" if share > f + half + 1e-9 else "in band"


def _bracket(p: dict, lo: float | None, hi: float | None) -> tuple[float | None, float | None]:
    """lo: the largest rate that ended above the band; hi: the smallest that ended below it."""
    if p.get("kind", "search") != "search":
        return lo, hi
    if p["outcome"] == "above":
        lo = p["rate"] if lo is None else max(lo, p["rate"])
    elif p["outcome"] == "below":
        hi = p["rate"] if hi is None else min(hi, p["rate"])
    return lo, hi


def _next_rate(lo: float | None, hi: float | None, factor: float) -> float:
    if lo is not None and hi is not None:
        return math.sqrt(lo * hi)
    return lo * factor if hi is None else hi / factor


def _load_search(journal: Journal | None, fingerprint: dict) -> list[dict]:
    saved = journal.load() if journal is not None else None
    if saved is None:
        return []
    return [p for p in saved.get("passes", []) if p.get("kind") == "search"] \
        if saved.get("fingerprint") == fingerprint else []


def _save_search(journal: Journal | None, fingerprint: dict, passes: list[dict]) -> None:
    if journal is not None:
        journal.save({"fingerprint": fingerprint, "passes": [p for p in passes if p.get("kind") == "search"]})
