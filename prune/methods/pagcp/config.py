# AGPL-3.0 License
"""Every PAGCP knob in one place: the option sets (Literal tuples, also the CLI's `choices=`), `PAGCPOptions`
(all of compress.py's PAGCP flags, validated once), and the two views the passes take of it: `PAGCPConfig` (one
pass's policy) and `FlopsBudget` (a FLOPs target). prune/methods/pagcp/README.md lists each knob with its flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Literal, get_args

from utils.general import UsageError

Saliency = Literal["l1", "l2", "fisher"]
Search = Literal["linear", "gallop"]
Schedule = Literal["reference", "flops"]
Trip = Literal["any", "mean"]
Units = Literal["global", "backbone"]
OracleBN = Literal["running", "batch"]
BudgetMode = Literal["greedy", "search"]
SALIENCIES: tuple[str, ...] = get_args(Saliency)
SEARCHES: tuple[str, ...] = get_args(Search)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
TRIPS: tuple[str, ...] = get_args(Trip)
UNITS: tuple[str, ...] = get_args(Units)
ORACLE_BN: tuple[str, ...] = get_args(OracleBN)
BUDGET_MODES: tuple[str, ...] = get_args(BudgetMode)
REFERENCE_FLAGS = ("initial_rate", "initial_thres")  # given: PAGCP bounds the loss growth, no default FLOPs target


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"PAGCP {name} must be one of {', '.join(allowed)}, got '{value}'")


@dataclass
class PAGCPConfig:
    """One pass's policy (prune/methods/pagcp/reference.py and greedy.py)."""

    initial_rate: float = 0.05  # allowed relative growth of each task loss for the first unit
    initial_thres: float = 5.0  # cap of the cumulative growth (with --exp)
    exp: bool = False  # per-unit threshold decays by lambda solving prod(1 + rate*lambda^i) = thres
    topk: float = 1.0  # keep the best int(N*topk) units' ratios (by loss increase per FLOP removed)
    step: float = 0.05  # ratio grid: step, 2*step, ... <= max_ratio
    max_ratio: float = 0.95
    criterion: Saliency = "l1"  # saliency inside a unit, recomputed on the pruned model
    divisor: int = 1
    min_keep: int = 1
    search: Search = "linear"  # linear: every ratio up to the first trip (the reference); gallop: fewer calls
    schedule: Schedule = "reference"  # reference: thres_i = rate * lambda^i per unit; flops: rate x FLOPs share removed
    trip: Trip = "any"  # any: a cut trips when any task loss exceeds (1 + thres) x its base (reference); mean: their mean
    guard: bool = True  # stop the pass once a task loss exceeds initial_thres x its original value

    def __post_init__(self):
        if self.criterion not in SALIENCIES:
            raise ValueError(f"PAGCP saliency must be l1, l2 or fisher, got '{self.criterion}'")
        _check_choice("search", self.search, SEARCHES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("trip", self.trip, TRIPS)

    def ratios(self) -> list[float]:
        n = int(math.floor(self.max_ratio / self.step + 1e-9))
        return [round(self.step * (i + 1), 6) for i in range(n)]


@dataclass
class FlopsBudget:
    """PAGCP to a FLOPs target (prune/methods/pagcp/budget.py, greedy.py)."""

    target: float  # FLOPs share to end at (of the conv FLOPs of the model the pass starts from)
    tol: float = 0.01  # the pass ends within target +- tol
    search_images: int = 16  # calibration images of the search passes / the greedy's pricing
    max_passes: int = 8  # search passes at most
    max_topups: int = 3  # top-up passes at most after the final pass
    factor: float = 4.0  # bracketing step of the scale
    mode: BudgetMode = "greedy"  # greedy: prune/methods/pagcp/greedy.py; search: cheap passes find the threshold scale
    commit: float = 0.2  # greedy: a round prices steps worth 1/commit of the FLOPs it needs to remove
    rounds: int = 3  # greedy: pricing rounds planned at least (one oracle call per unit each)
    round_cut: float | None = 0.08  # greedy: ... and enough that no round removes more than this share of the FLOPs left
    greedy_cheap: bool = True  # greedy: price the steps with the search passes' oracle (search_images)
    # the share's measure: None = conv FLOPs (prune.surgery.estimate_flops); else a function of (groups, removed)
    # returning (before, after) in the same shape, e.g. a runtime's predicted latency (prune/latency_table.py)
    cost: Callable | None = field(default=None, compare=False, repr=False)
    counts: dict | None = field(default=None, compare=False, repr=False)  # group id -> the kept counts allowed


@dataclass
class PAGCPOptions:
    """All of compress.py's PAGCP flags (names as on the command line, `-` as `_`); see the README for each."""

    initial_rate: float = 0.05
    initial_thres: float = 5.0
    exp: bool = False
    topk: float = 1.0
    ratio_step: float = 0.05
    prunemethod: str = "L1"  # a Saliency, any case
    ratio_search: Search = "gallop"
    threshold_schedule: Schedule = "reference"
    trip: Trip = "any"
    compression: Units = "global"
    calib_images: int = 64
    oracle_bn: OracleBN = "running"
    prefix_cache: bool = True
    round: int = 0  # round index offset (with rate_slope / thres_slope)
    rate_slope: float = 0.0
    thres_slope: float = 0.0
    divisor: int = 1
    min_channels: int = 1
    target_flops: float | None = None
    flops_tol: float = 0.01
    flops_budget: BudgetMode = "greedy"
    search_images: int = 16
    pricing_rounds: int = 3
    pricing_cut: float = 0.08
    latency_cost: Callable | None = None  # set by compress.py's latency target: FlopsBudget.cost
    latency_counts: dict | None = None  # ... and FlopsBudget.counts

    @classmethod
    def from_namespace(cls, ns) -> "PAGCPOptions":
        """The PAGCP options of an argparse namespace (or any object with those attributes)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})

    def policy(self, round_index: int = 0) -> PAGCPConfig:
        """The pass's policy in round `round_index` (the --rate_slope / --thres_slope schedule applied)."""
        return PAGCPConfig(initial_rate=self.initial_rate + round_index * self.rate_slope,
                           initial_thres=self.initial_thres + round_index * self.thres_slope, exp=self.exp,
                           topk=self.topk, step=self.ratio_step, criterion=self.prunemethod.lower(),
                           divisor=self.divisor, min_keep=self.min_channels, search=self.ratio_search,
                           schedule=self.threshold_schedule, trip=self.trip)

    def budget(self, target: float) -> FlopsBudget:
        return FlopsBudget(target, self.flops_tol, self.search_images, mode=self.flops_budget,
                           rounds=self.pricing_rounds, round_cut=self.pricing_cut, cost=self.latency_cost,
                           counts=self.latency_counts)


def check_options(opt) -> None:
    """compress.py's PAGCP flags: refuse bad values and conflicting budgets in one line (UsageError).

    Called after `resolve_target`; opt: the run's options namespace."""
    if opt.pruning_params is not None:
        raise UsageError("--pruning-params prunes by a criterion: add --criterion 0-6 (or --method l2, ...)")
    if opt.initial_thres <= 1:
        raise UsageError(f"--initial_thres must be > 1 (a cap on cumulative loss growth), got {opt.initial_thres}")
    if not 0 < opt.initial_rate < (1 if opt.threshold_schedule == "reference" else float("inf")):
        span = "(0, 1)" if opt.threshold_schedule == "reference" else "> 0"
        raise UsageError(f"--initial_rate must be {'in ' if '(' in span else ''}{span}, got {opt.initial_rate}")
    if not 0 < opt.topk <= 1:
        raise UsageError(f"--topk must be in (0, 1], got {opt.topk}")
    if opt.target_flops is None:
        return
    if opt.pricing_rounds < 1:
        raise UsageError(f"--pricing-rounds must be >= 1, got {opt.pricing_rounds}")
    if not 0 < opt.pricing_cut < 1:
        raise UsageError(f"--pricing-cut must be in (0, 1) (the largest share of the FLOPs left one pricing round "
                         f"removes), got {opt.pricing_cut}")
    if 0 < opt.topk < 1:
        raise UsageError("--topk drops units after the pass and would miss --target-flops: use one or the other")
    if not 0 < opt.flops_tol < 0.5:
        raise UsageError(f"--flops-tol must be in (0, 0.5), got {opt.flops_tol}")
    if opt.search_images < 1:
        raise UsageError(f"--search-images must be >= 1, got {opt.search_images}")


def resolve_target(opt, explicit: set[str], d: dict, other_target: bool = False) -> None:
    """PAGCP's budget when none was given: `pagcp_target` of the base FLOPs unless the reference flags
    (REFERENCE_FLAGS) were set; with a target, the oracle settings of `target_oracle` unless given. With the
    reference flags and no `--reference-protocol`, `opt.reference_budget` holds the `target_oracle` settings the
    second pass uses (the first, the reference's, only sets its FLOPs share); None otherwise.

    opt: the run's options (filled in place: settings, before anything runs); explicit: option names the user
    set (command line, recipe, demo profile); d: compress defaults (cfg/default.yaml); other_target: a target
    that is not in FLOPs was given (--target-speedup / --target-latency): no FLOPs target, the same oracle."""
    paper = opt.target_flops is None and not other_target and any(k in explicit for k in REFERENCE_FLAGS)
    if opt.target_flops is None and not other_target and not paper:
        opt.target_flops = d.get("pagcp_target")
    # the reference flags without --reference-protocol: their pass sets the FLOPs share, the improved oracle
    # (these settings) reaches it (prune/methods/pagcp/method.py)
    opt.reference_budget = ({k: v for k, v in (d.get("target_oracle") or {}).items() if k not in explicit}
                            if paper and not getattr(opt, "reference_protocol", False) else None)
    if opt.target_flops is not None or other_target:
        for k, v in (d.get("target_oracle") or {}).items():
            if k not in explicit:
                setattr(opt, k, v)
