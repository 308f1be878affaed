# AGPL-3.0 License
"""PAGCP's budgeted greedy: PAGCP's units, saliency and loss oracle, spent on a FLOPs budget by loss per FLOP.

The reference pass visits each unit once, in a fixed order, and cuts it until a task loss passes a threshold;
where it ends in FLOPs depends on those thresholds, and a unit visited early is judged on a model the later
cuts have not touched yet. Here every decision is a price comparison on the model as it is now:

    repeat until the conv FLOPs share is within target +- tol:
        for every unit that can still be cut: try its next step on the ratio grid (the unit's channels ranked
        by PAGCP's L1/L2 saliency on the current masked model, those already removed first) and measure
            cost = (mean over tasks of loss / current loss - 1) / FLOPs share the step removes
        commit the cheapest `commit` share of these steps, cheapest first, skipping any that would take the
        share below target - tol, stopping as soon as it is within target + tol;
        the current losses become the oracle's losses of the committed state.

"Mean over tasks" is the trip rule `mean` (`any` uses the largest task ratio instead). A step whose losses fall
costs less than nothing and goes first. When no step fits above target - tol any more the grid step is halved
(down to one channel), so the run always ends inside the band unless every unit is cut to the grid's largest
ratio. Cost: one oracle call per unit that can still be cut per round, plus one per round; with `commit` 0.2
about 5 rounds per 0.1 of FLOPs removed on yolov5n (README, Compress).

With a `journal` path the run survives a kill: after every round the committed cuts, the current losses and the
round count are written atomically; a later run with the same settings re-applies them without oracle calls and
continues with the next round.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from prune.groups import Group, GroupSet
from prune.pagcp import PAGCP, PAGCPConfig, UnitDecision
from prune.surgery import estimate_flops, keep_count


class BudgetedGreedy(PAGCP):
    """PAGCP's units, saliency, masks and oracle, committed by loss increase per FLOP to a FLOPs target."""

    def __init__(self, model, groups: GroupSet, task_losses: Callable[[], np.ndarray], tasks: list[str],
                 cfg: PAGCPConfig, target: float, tol: float = 0.01, commit: float = 0.2,
                 units: list[Group] | None = None, progress: bool = True, journal: str | Path | None = None):
        """target: conv FLOPs share to end at (within +- tol); commit: share of the priced steps committed per
        round (smaller = closer to a one-step-at-a-time greedy, more rounds)."""
        super().__init__(model, groups, task_losses, tasks, cfg, units=units, progress=progress, journal=journal)
        if not 0 < commit <= 1:
            raise ValueError(f"commit share must be in (0, 1], got {commit}")
        self.target, self.tol, self.commit = target, tol, commit
        self.rounds = 0
        self.lam = 1.0

    def _agg(self, rel: np.ndarray) -> float:
        return float(rel.mean() if self.cfg.trip == "mean" else rel.max())

    def _next_cut(self, g: Group, prev: list[int], step: float) -> int | None:
        """Channels removed by the unit's next grid point above its current cut (None: nothing left to cut)."""
        n, k = len(g), 1
        while True:
            r = min(round(step * k, 9), self.cfg.max_ratio)
            n_rm = n - keep_count(n, int(round(r * n)), self.cfg.divisor, self.cfg.min_keep)
            if n_rm > len(prev):
                return n_rm
            if r >= self.cfg.max_ratio:
                return None
            k += 1

    def run(self) -> tuple[dict[int, list[int]], list[UnitDecision]]:
        cfg = self.cfg
        units = list(self.units)
        decisions = {g.id: UnitDecision(g.id, g.producers, len(g)) for g in units}
        cut: dict[int, list[int]] = {g.id: [] for g in units}
        lo, hi = self.target - self.tol, self.target + self.tol
        step = cfg.step
        with self.masks:
            original = self._losses()
            state = self._load_state(units, original)
            if state is not None:
                cut = {int(k): v for k, v in state["cut"].items()}
                for gid, pos in cut.items():
                    if pos:
                        self.masks.set_removed(gid, pos)
                decisions = {d["group"]: UnitDecision(**d) for d in state["decisions"]}
                base, step, self.rounds = np.asarray(state["base"]), state["step"], state["rounds"]
                self.resumed_units = sum(1 for v in cut.values() if v)
            else:
                base = original.copy()
            share = self.share()
            bar = None
            if self.progress:
                from ultralytics.utils import TQDM

                bar = TQDM(total=round(100 * (1 - self.target)), desc="PAGCP budget (FLOPs % removed)")
                bar.update(round(100 * (1 - share)))
            while share > hi:
                priced = self._price_round(units, cut, base, share, step, decisions)
                if not priced:
                    break  # every unit is at the grid's largest ratio
                n_commit = max(1, math.ceil(self.commit * len(priced)))
                committed = 0
                for cost, gid, new, rel, sh in priced:
                    if committed >= n_commit:
                        break
                    if sh < lo - 1e-12:
                        continue  # would undershoot the band: a smaller step of another unit may still fit
                    self.masks.set_removed(gid, new)
                    cut[gid] = list(new)
                    d = decisions[gid]
                    d.removed, d.ratio = sorted(int(c) for c in new), len(new) / d.channels
                    d.loss_ratios, d.threshold = rel.tolist(), cost  # the price this step was bought at
                    share = sh
                    committed += 1
                    if share <= hi:
                        break
                self.rounds += 1
                if committed:
                    base = self._losses()
                elif step > 1.0 / max(len(g) for g in units):
                    step /= 2  # nothing fits above the band's floor: finer steps (down to one channel)
                else:
                    break
                if bar is not None:
                    bar.update(round(100 * (1 - share)) - bar.n)
                self._save_state(units, cut, original, base, step, decisions)
            if bar is not None:
                bar.close()
            self.original_losses, self.final_losses = original, np.maximum(base, original)
            self.masks.reset()
        removed = {gid: sorted(int(c) for c in pos) for gid, pos in cut.items() if pos}
        base_flops = estimate_flops(self.groups, {})[0]
        for d in decisions.values():
            if d.removed:
                d.flops_removed = base_flops - estimate_flops(self.groups, {d.group: d.removed})[1]
        return removed, [decisions[g.id] for g in units]

    def _price_round(self, units, cut, base, share, step, decisions) -> list[tuple]:
        """(cost per FLOP share, group, channels after the step, loss ratios, share after) per unit, cheapest first."""
        priced = []
        first = {g.id: self.masks.first_layer(g.id) for g in units}
        for g in sorted(units, key=lambda g: -1 if first[g.id] is None else first[g.id]):
            prev = cut[g.id]
            n_rm = self._next_cut(g, prev, step)
            if n_rm is None:
                continue
            if self._focus is not None:  # in layer order the oracle's cached prefix is extended, not recomputed
                self._focus(self.masks, g.id)
            taken = set(prev)
            order = prev + [int(c) for c in np.argsort(self.saliency(g), kind="stable") if int(c) not in taken]
            new = order[:n_rm]
            sh = self.share((g.id, new))
            self.masks.set_removed(g.id, new)
            rel = self._losses() / np.maximum(base, 1e-12)
            self.masks.set_removed(g.id, prev)
            d = decisions[g.id]
            d.trials += 1
            d.curve.append([round(n_rm / len(g), 6), *rel.tolist()])
            priced.append(((self._agg(rel) - 1) / max(share - sh, 1e-12), g.id, new, rel, sh))
        if self._focus is not None:
            self._focus(self.masks, None)
        priced.sort(key=lambda p: p[0])
        return priced

    # ---------------------------------------------------------------- journal (resume within a run)
    def _fingerprint(self, units: list[Group]) -> dict:
        return {"config": asdict(self.cfg), "target": self.target, "tol": self.tol, "commit": self.commit,
                "tasks": list(self.tasks), "units": [[g.id, len(g)] for g in units]}

    def _save_state(self, units, cut, original, base, step, decisions) -> None:
        if self.journal is None:
            return
        from utils.files import write_json

        write_json({**self._fingerprint(units), "original": original.tolist(), "base": np.asarray(base).tolist(),
                    "step": step, "rounds": self.rounds, "oracle_calls": self.oracle_calls,
                    "cut": {str(k): [int(c) for c in v] for k, v in cut.items()},
                    "decisions": [asdict(d) for d in decisions.values()]}, self.journal, indent=None)

    def _load_state(self, units: list[Group], original: np.ndarray) -> dict | None:
        if self.journal is None or not self.journal.exists():
            return None
        try:
            state = json.loads(self.journal.read_text())
        except (OSError, ValueError):
            return None
        hint = "resume with the same flags, or delete it to redo this round's pruning"
        if {k: state.get(k) for k in self._fingerprint(units)} != json.loads(json.dumps(self._fingerprint(units))):
            raise ValueError(f"{self.journal} was written by a PAGCP run with other settings or another model; {hint}")
        if not np.allclose(state["original"], original, rtol=1e-3, atol=1e-6):
            raise ValueError(f"{self.journal}: the unpruned losses differ from this model's on the calibration "
                             f"images (another model or dataset?); {hint}")
        self.oracle_calls += state.get("oracle_calls", 0) - 1  # the first call was repeated above
        return state

