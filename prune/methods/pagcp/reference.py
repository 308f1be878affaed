# AGPL-3.0 License
"""PAGCP policy: sequential greedy global channel pruning under a performance-aware oracle (seed 000).

Units are the engine's prunable groups. They are visited in order of the FLOPs they remove when
pruned alone by 30% (descending; ascending when lambda > 1). For each unit, on the current (already
masked) model, with saliency recomputed there, ratios step+0.. are tried; the first ratio at which any
task loss exceeds (1 + thres) x its current base stops the search and the previous ratio is kept.
On acceptance thres <- thres * lambda and each base <- max(base, accepted loss).

Departures from the reference code, on purpose:
  * a unit whose losses never trip keeps the largest ratio tried (the reference leaves it unpruned during
    the pass and then gives it 0.90);
  * guard: once any task loss exceeds initial_thres x its *original* value (the cumulative budget that
    --exp's product encodes), no further unit is pruned: a broken model's loss stops moving, and
    without the guard the oracle would then accept the largest ratio everywhere;
  * trials are masks on the live model and the oracle is any callable returning per-task losses (a
    calibration subset in compress.py), not full validation passes.

With a `journal` path the pass survives a kill: after every unit the decisions so far and the oracle
state (original and current base losses, threshold, stopped flag) are written atomically; a later run
with the same settings re-applies the finished units' masks without oracle calls and continues from
the next unit, so it ends exactly where an uninterrupted pass would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from prune.groups import Group, GroupSet
from prune.masks import ChannelMasks
from prune.methods.pagcp.config import PAGCPConfig
from prune.methods.pagcp.journal import Journal
from prune.surgery import estimate_flops, keep_count


@dataclass
class UnitDecision:
    group: int
    producers: list[str]
    channels: int
    ratio: float = 0.0
    removed: list[int] = field(default_factory=list)
    tripped_by: str = ""  # task whose loss stopped the search ('' = never tripped)
    loss_ratios: list[float] = field(default_factory=list)  # accepted loss / base, per task
    flops_removed: float = 0.0
    threshold: float = 0.0
    trials: int = 0
    curve: list = field(default_factory=list)  # [ratio, loss/base per task] for every ratio tried

    def row(self, tasks: list[str]) -> str:
        lr = " ".join(f"{t}={r:.3f}" for t, r in zip(tasks, self.loss_ratios))
        return (f"{self.group:4d} {self.channels:5d} -> {self.channels - len(self.removed):5d}  ratio {self.ratio:.2f}  "
                f"thres {self.threshold:.4f}  trip {self.tripped_by or '-':5s} {lr}  {','.join(self.producers)}")


def loss_ratios(losses: np.ndarray, base: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Per-task loss ratio losses / base, shape (tasks,). A task whose base loss is 0 and stays 0 (the class loss of
    a 1-class YOLOv5/YOLOv7 model: no class term) has no signal and gets 1.0, so it neither drags a mean below 1
    (which would price every cut as a gain) nor trips a threshold."""
    losses, base = np.asarray(losses, dtype=float), np.asarray(base, dtype=float)
    rel = losses / np.maximum(base, eps)
    return np.where((base <= eps) & (losses <= eps), 1.0, rel)


def solve_lambda(rate: float, thres: float, n_units: int) -> float:
    """lambda with prod_{i<n}(1 + rate * lambda^i) = thres (bisection; the product grows with lambda)."""
    if n_units <= 0:
        return 1.0

    def prod(lam):
        return float(np.prod([1 + rate * lam**i for i in range(n_units)]))

    if prod(0.0) >= thres:
        return 0.0
    lo, hi = 0.0, 1.0
    while prod(hi) < thres:
        hi *= 2
        if hi > 64:
            break
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if prod(mid) < thres else (lo, mid)
    return (lo + hi) / 2


class PAGCP:
    def __init__(self, model: nn.Module, groups: GroupSet, task_losses: Callable[[], np.ndarray],
                 tasks: list[str], cfg: PAGCPConfig, units: list[Group] | None = None, progress: bool = True,
                 journal: Journal | None = None, floor: float | None = None,
                 start: dict[int, list[int]] | None = None, monitor: Callable[[float, float], bool] | None = None):
        """journal: progress file read at the start and rewritten after every unit (by the processes whose
        journal writes: one of a DDP run).
        floor: no cut may take the conv FLOPs below this share of the unpruned model's (a FLOPs budget);
        start: channels already removed (group id -> positions): the pass only removes more (a top-up pass);
        monitor(share, least share still reachable) after each unit: True ends the pass there (a search pass
        that already missed its band)."""
        self.model, self.groups, self.task_losses, self.tasks, self.cfg = model, groups, task_losses, tasks, cfg
        self.units = units if units is not None else groups.prunable
        self.masks = ChannelMasks(model, groups)
        self.oracle_calls = 0
        self.resumed_units = 0  # units replayed from the journal
        self.progress = progress
        self.journal = journal
        self.floor, self.start, self.monitor = floor, dict(start or {}), monitor
        self.aborted = False  # the monitor ended the pass
        self.guard_stopped = -1  # index of the unit after which the cumulative guard stopped the pass (-1: never)
        self.original_losses = self.final_losses = None
        self._in_cols = self._input_columns()
        self._focus = getattr(task_losses, "focus", None)  # oracles that cache per unit are told which one
        self._mask_fisher = getattr(task_losses, "mask_fisher", None)
        if cfg.criterion == "fisher" and self._mask_fisher is None:
            raise ValueError("PAGCP fisher saliency needs an oracle with gradients (prune.methods.pagcp.oracle.CalibrationOracle)")
        self._fisher: tuple[torch.Tensor, np.ndarray] | None = None  # (mask values it was computed at, scores)

    # ---------------------------------------------------------------- saliency on the pruned model
    def _input_columns(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module -> (input columns, their class indices), so saliency can ignore columns masked away."""
        cols: dict[str, list[tuple[int, int]]] = {}
        for g in self.groups.groups:
            for r, ms in zip(g.classes, g.members):
                for m in ms:
                    if m.role == "in" and m.param == "weight" and m.dim == 1:
                        cols.setdefault(m.module, []).append((m.index, self.masks.index[r]))
        return {k: (torch.tensor([c for c, _ in v]), torch.tensor([i for _, i in v])) for k, v in cols.items()}

    def saliency(self, g: Group) -> np.ndarray:
        """Per channel of the unit, shape (channels,), higher = kept first: L1 (or L2) of its producer filters over
        the input columns still present, or (fisher) the Fisher information of its mask on the calibration images
        under the current masks (prune.methods.pagcp.oracle.CalibrationOracle.mask_fisher; recomputed when any mask changed)."""
        if self.cfg.criterion == "fisher":
            if self._fisher is None or not torch.equal(self._fisher[0], self.masks.values):
                self._fisher = self.masks.values.clone(), self._mask_fisher(self.masks)
            return self._fisher[1][[self.masks.index[r] for r in g.classes]]
        tensors = dict(self.model.named_parameters())
        keep_cache: dict[str, torch.Tensor] = {}
        l1 = self.cfg.criterion == "l1"
        scores = np.zeros(len(g))
        for i, ms in enumerate(g.members):
            for m in ms:
                if m.role != "out" or m.param != "weight" or m.dim != 0 or m.module not in g.producers:
                    continue
                w = tensors[f"{m.module}.weight"].detach()[m.index].float()
                if m.module in self._in_cols and w.shape[0] > 1:
                    if m.module not in keep_cache:
                        cols, idx = self._in_cols[m.module]
                        keep = torch.ones(w.shape[0])
                        keep[cols] = self.masks.values[idx]
                        keep_cache[m.module] = keep.view(-1, *([1] * (w.dim() - 1))).to(w.device)  # CUDA models
                    w = w * keep_cache[m.module]
                scores[i] += float(w.abs().sum()) if l1 else float(w.pow(2).sum())
        return scores if l1 else np.sqrt(scores)

    # ---------------------------------------------------------------- FLOPs of the current masks
    def share(self, extra: tuple[int, list[int]] | None = None) -> float:
        """Conv FLOPs share of the unpruned model under the current masks (with one group's cut replaced by
        extra = (group id, positions))."""
        removed = self.masks.removed()
        if extra is not None:
            removed[extra[0]] = list(extra[1])
        before, after = estimate_flops(self.groups, removed)
        return after / before

    def _least_share(self, units: list[Group]) -> float:
        """The least FLOPs share still reachable: every unit not visited yet cut to the largest ratio on the grid."""
        removed = self.masks.removed()
        for g in units:
            n = len(g) - keep_count(len(g), int(round(self.cfg.ratios()[-1] * len(g))), self.cfg.divisor, self.cfg.min_keep)
            if n > len(removed.get(g.id, [])):
                removed[g.id] = list(range(n))
        before, after = estimate_flops(self.groups, removed)
        return after / before

    # ---------------------------------------------------------------- the greedy pass
    def _losses(self) -> np.ndarray:
        self.oracle_calls += 1
        with torch.no_grad():
            return np.asarray(self.task_losses(), dtype=np.float64)

    def order(self) -> list[Group]:
        base, _ = estimate_flops(self.groups, {})
        cut = {}
        for g in self.units:
            n_rm = len(g) - keep_count(len(g), int(round(0.3 * len(g))), 1, self.cfg.min_keep)
            cut[g.id] = base - estimate_flops(self.groups, {g.id: list(range(n_rm))})[1]
        lam = self.lam
        return sorted(self.units, key=lambda g: cut[g.id], reverse=lam <= 1)

    def run(self) -> tuple[dict[int, list[int]], list[UnitDecision]]:
        cfg = self.cfg
        self.lam = solve_lambda(cfg.initial_rate, cfg.initial_thres, len(self.units)) if cfg.exp else 1.0
        units = self.order()
        base_flops, _ = estimate_flops(self.groups, {})
        with self.masks:
            original = self._losses()
            for gid, pos in self.start.items():
                self.masks.set_removed(gid, pos)
            current = self._losses() if self.start else original
            state = self._load_journal(units, original)
            if state is None:
                decisions: list[UnitDecision] = []
                base, thres, stopped = current.copy(), cfg.initial_rate, False
            else:  # the journal's values, not recomputed ones, so the rest of the pass is identical
                decisions = [UnitDecision(**d) for d in state["decisions"]]
                original, base = np.asarray(state["original"]), np.asarray(state["base"])
                thres, stopped = state["thres"], state["stopped"]
                for d in decisions:
                    if d.removed:
                        self.masks.set_removed(d.group, d.removed)
                self.resumed_units = len(decisions)
            todo = units[len(decisions):]
            it = todo
            if self.progress:
                from ultralytics.utils import TQDM

                it = TQDM(todo, desc="PAGCP units", total=len(units), initial=len(decisions))
            for i, g in enumerate(it):
                d = UnitDecision(g.id, g.producers, len(g), threshold=thres)
                if not stopped:
                    base, thres, stopped = self._visit(g, d, base, thres, original, base_flops)
                    if stopped and self.guard_stopped < 0:
                        self.guard_stopped = len(decisions)
                elif self.start.get(g.id):  # a top-up pass keeps what the earlier pass removed
                    d.removed, d.ratio = list(self.start[g.id]), len(self.start[g.id]) / len(g)
                decisions.append(d)
                self._save_journal(units, decisions, original, base, thres, stopped)
                if self.monitor is not None and self.monitor(self.share(), self._least_share(units[i + 1:])):
                    self.aborted = True
                    break
            if self._focus is not None:
                self._focus(self.masks, None)  # frees the oracle's cached activations
            self.original_losses, self.final_losses = original, base
            self.masks.reset()
        decisions = self._topk(decisions)
        removed = {d.group: d.removed for d in decisions if d.removed}
        return removed, decisions

    def _visit(self, g: Group, d: UnitDecision, base: np.ndarray, thres: float, original: np.ndarray,
               base_flops: float) -> tuple[np.ndarray, float, bool]:
        """Search one unit's ratio on the current masked model; fills d, returns the new (base, thres, stopped)."""
        cfg = self.cfg
        if self._focus is not None:  # the oracle may reuse the outputs of the layers before this unit
            self._focus(self.masks, g.id)
        prev = [int(p) for p in self.start.get(g.id, [])]  # a top-up pass removes these first, then more
        taken = set(prev)
        order = np.array(prev + [int(c) for c in np.argsort(self.saliency(g), kind="stable") if int(c) not in taken],
                         dtype=int)
        cuts, last = [], len(prev)  # distinct (ratio, channels removed) on the grid: rounding can repeat a cut
        for r in cfg.ratios():
            n_rm = len(g) - keep_count(len(g), int(round(r * len(g))), cfg.divisor, cfg.min_keep)
            if n_rm > last:
                cuts.append((r, n_rm))
                last = n_rm
        shares: list[float] = []
        if self.floor is not None or cfg.schedule == "flops":
            before = self.share()
            for _, n_rm in cuts:  # FLOPs fall with every channel removed: stop at the first cut past the floor
                sh = self.share((g.id, order[:n_rm]))
                if self.floor is not None and sh < self.floor - 1e-12:
                    break
                shares.append(sh)
            cuts = cuts[: len(shares)]
        unit_thres = [thres * (before - sh) if cfg.schedule == "flops" else thres for sh in shares] or [thres] * len(cuts)

        tripped: dict[int, str] = {}  # cut index -> task whose loss went over

        def trips(i: int) -> tuple[bool, np.ndarray]:
            r, n_rm = cuts[i]
            self.masks.set_removed(g.id, order[:n_rm])
            losses = self._losses()
            d.trials += 1
            rel = loss_ratios(losses, base)
            d.curve.append([r, *rel.tolist()])
            over = rel > 1 + unit_thres[i] if cfg.trip == "any" else np.full(len(rel), rel.mean() > 1 + unit_thres[i])
            if over.any():
                tripped[i] = self.tasks[int(np.argmax(rel * over))]
            return bool(over.any()), losses

        search = self._search_gallop if cfg.search == "gallop" else self._search_linear
        best, acc_loss = search(len(cuts), trips)
        d.tripped_by = tripped.get(best + 1, "")  # the cut right after the kept one ('' = the grid never tripped)
        d.curve.sort(key=lambda c: c[0])
        accepted, last_n = cuts[best] if best >= 0 else (len(prev) / len(g), len(prev))
        acc_loss = base.copy() if best < 0 else acc_loss
        self.masks.set_removed(g.id, order[:last_n])
        d.ratio, d.removed = (accepted, sorted(order[:last_n].tolist())) if last_n else (0.0, [])
        d.loss_ratios = loss_ratios(acc_loss, base).tolist()
        if best >= 0:
            d.threshold = unit_thres[best]
        stopped = False
        if best >= 0:
            d.flops_removed = base_flops - estimate_flops(self.groups, {g.id: d.removed})[1]
            base = np.maximum(base, acc_loss)
            thres *= self.lam
            if cfg.guard:  # cumulative budget spent: broken-model guard
                stopped = bool((base > cfg.initial_thres * original).any())
        return base, thres, stopped

    @staticmethod
    def _search_linear(n: int, trips) -> tuple[int, np.ndarray | None]:
        """The reference: try cuts in order, keep the one before the first that trips. (index, its losses)"""
        best, best_loss = -1, None
        for i in range(n):
            over, losses = trips(i)
            if over:
                break
            best, best_loss = i, losses
        return best, best_loss

    @staticmethod
    def _search_gallop(n: int, trips) -> tuple[int, np.ndarray | None]:
        """Same answer as the linear scan when the losses grow with the ratio, in O(log) oracle calls: probe cuts
        0, 1, 3, 7, ... until one trips, then bisect between the last that held and it. Most units trip early,
        so the probes start small."""
        best, best_loss, hi, step = -1, None, n, 1
        i = 0
        while i < n:
            over, losses = trips(i)
            if over:
                hi = i
                break
            best, best_loss = i, losses
            i, step = i + step, step * 2
        while hi - best > 1:  # invariant: best holds (or is -1, no cut), hi trips (or is n, past the grid)
            mid = (best + hi) // 2
            over, losses = trips(mid)
            if over:
                hi = mid
            else:
                best, best_loss = mid, losses
        return best, best_loss

    # ---------------------------------------------------------------- progress journal (resume within a pass)
    def _fingerprint(self, units: list[Group]) -> dict:
        return {"config": asdict(self.cfg), "lambda": self.lam, "tasks": list(self.tasks),
                "units": [[g.id, len(g)] for g in units]}

    def _save_journal(self, units, decisions, original, base, thres, stopped) -> None:
        if self.journal is not None:
            self.journal.save({**self._fingerprint(units), "original": original.tolist(), "base": base.tolist(),
                               "thres": thres, "stopped": stopped, "oracle_calls": self.oracle_calls,
                               "decisions": [asdict(d) for d in decisions]})

    def _load_journal(self, units: list[Group], original: np.ndarray) -> dict | None:
        """The journal's state if it belongs to this pass (same settings, units and unpruned losses), else None
        when there is none; refuses one written for other settings, another model or by another version."""
        state = self.journal.load() if self.journal is not None else None
        if state is None:
            return None
        self.journal.check(state, self._fingerprint(units), original)
        self.oracle_calls += state.get("oracle_calls", 0) - 1  # the first call was repeated above
        return state

    def _topk(self, decisions: list[UnitDecision]) -> list[UnitDecision]:
        if self.cfg.topk >= 1.0:
            return decisions
        alive = [d for d in decisions if d.removed]
        k = int(len(alive) * self.cfg.topk)
        cost = {d.group: sum(max(x - 1, 0.0) for x in d.loss_ratios) / max(d.flops_removed, 1.0) for d in alive}
        keep = {d.group for d in sorted(alive, key=lambda d: cost[d.group])[:k]}
        for d in alive:
            if d.group not in keep:
                d.ratio, d.removed = 0.0, []
        return decisions
