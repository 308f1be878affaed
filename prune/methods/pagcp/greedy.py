# AGPL-3.0 License
"""PAGCP's budgeted greedy: PAGCP's units, saliency and loss oracle, spent on a FLOPs budget by loss per FLOP.

The reference pass visits each unit once, in a fixed order, and cuts it until a task loss passes a threshold;
where it ends in FLOPs depends on those thresholds, and a unit visited early is judged on a model the later
cuts have not touched yet. Here every decision is a price comparison on the model as it is now, in pricing
rounds whose goals fall geometrically from the current share to the target. How many are planned:
`plan_rounds` = at least `rounds` (default 3) and enough that no round removes more than `max_cut` (default
0.08) of the FLOPs left. Why: with few rounds to a deep target the first round's priced steps are cuts of most of
every unit's channels, priced far outside the range where the loss ratio of one step predicts anything, and the
pruned model recovers worse after fine-tuning (docs/benchmarks/pagcp.md has the measurements).

    round r (of R planned), goal = share x (target / share)^(1 / (R - r)):
        step = the smallest multiple of the ratio grid step such that every unit cut by `step` more of its
               channels would remove 1/commit (default 5x) the FLOPs the round needs: the round then chooses
               among far more cuts than it takes;
        for every unit that can still be cut: cut `step` more of its channels (ranked by PAGCP's L1/L2 saliency
        on the current masked model, those already removed first) and measure
            cost = (mean over tasks of loss / current loss - 1) / FLOPs share the step removes
        commit the steps cheapest first, skipping any that would take the share below target - tol, until
        the share reaches the round's goal (the last round: target + tol);
        the current losses become the oracle's losses of the committed state.
    when the planned rounds end above target + tol: further rounds at the grid step, halved whenever nothing
    fits above target - tol (down to one channel).

"Mean over tasks" is the trip rule `mean` (`any` uses the largest task ratio instead). A step whose losses fall
costs less than nothing and goes first. The run ends inside the band unless every unit is cut to the grid's
largest ratio. Cost: one oracle call per unit that can still be cut per round, plus one per round (about
R x (units + 1) calls; docs/benchmarks/pagcp.md).

With a `journal` path the run survives a kill: after every round the committed cuts, the current losses and the
round count are written atomically; a later run with the same settings re-applies them without oracle calls and
continues with the next round.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable

import numpy as np

from prune.groups import Group, GroupSet
from prune.methods.pagcp.config import FlopsBudget, PAGCPConfig
from prune.methods.pagcp.journal import Journal
from prune.methods.pagcp.reference import PAGCP, UnitDecision, loss_ratios
from prune.surgery import estimate_flops, keep_count


def plan_rounds(target: float, rounds: int = 3, max_cut: float | None = 0.08) -> int:
    """Pricing rounds to plan for a FLOPs share `target` (0-1]: at least `rounds`, and enough that each round's
    goal removes at most `max_cut` of the FLOPs left (ceil(log target / log(1 - max_cut)); None: `rounds`).
    Raises ValueError for a max_cut outside (0, 1)."""
    if max_cut is None:
        return rounds
    if not 0 < max_cut < 1:
        raise ValueError(f"the largest share of FLOPs a pricing round removes must be in (0, 1), got {max_cut}")
    if target >= 1:
        return rounds
    return max(rounds, math.ceil(math.log(target) / math.log(1 - max_cut) - 1e-9))


class BudgetedGreedy(PAGCP):
    """PAGCP's units, saliency, masks and oracle, committed by loss increase per FLOP to a FLOPs target."""

    def __init__(self, model, groups: GroupSet, task_losses: Callable[[], np.ndarray], tasks: list[str],
                 cfg: PAGCPConfig, budget: FlopsBudget, units: list[Group] | None = None, progress: bool = True,
                 journal: Journal | None = None):
        """budget: target (conv FLOPs share to end at, within +- tol), the pricing rounds planned (`plan_rounds` of
        budget.rounds and budget.round_cut; each costs one oracle call per unit) and commit (the share of the priced
        steps a round needs: smaller = a wider choice per round, bigger steps priced)."""
        super().__init__(model, groups, task_losses, tasks, cfg, units=units, progress=progress, journal=journal)
        if not 0 < budget.commit <= 1:
            raise ValueError(f"commit share must be in (0, 1], got {budget.commit}")
        rounds = plan_rounds(budget.target, budget.rounds, budget.round_cut)
        if rounds < 1:
            raise ValueError(f"pricing rounds must be >= 1, got {rounds}")
        self.target, self.tol, self.commit, self.planned, self.rounds_asked = \
            budget.target, budget.tol, budget.commit, rounds, rounds
        self.rounds = 0
        self.lam = 1.0
        self.cost = budget.cost or estimate_flops  # the share's measure: conv FLOPs, or a runtime's latency
        self.counts = budget.counts or {}  # group id -> kept counts allowed (instead of --divisor rounding)

    def share(self, extra: tuple[int, list[int]] | None = None) -> float:
        """The share (of `self.cost`: conv FLOPs by default) of the unpruned model under the current masks,
        with one group's cut replaced by extra = (group id, positions)."""
        removed = self.masks.removed()
        if extra is not None:
            removed[extra[0]] = list(extra[1])
        before, after = self.cost(self.groups, removed)
        return after / before

    def _agg(self, rel: np.ndarray) -> float:
        return float(rel.mean() if self.cfg.trip == "mean" else rel.max())

    def _next_cut(self, g: Group, prev: list[int], step: float) -> int | None:
        """Channels removed after the unit's next step: `step` more of its channels than now, kept channels
        rounded as --divisor / --min-channels ask (None: nothing left to cut below max_ratio)."""
        n, cfg = len(g), self.cfg
        top = int(math.floor(cfg.max_ratio * n + 1e-9))
        ask = min(int(round((len(prev) / n + step) * n)), top)
        if g.id in self.counts:  # the kept counts the runtime rewards: the largest at or below the ask, else the least
            fits = [c for c in self.counts[g.id] if max(n - top, cfg.min_keep) <= c < n - len(prev)]
            if not fits:
                return None
            at_ask = [c for c in fits if c <= n - ask]
            return n - (max(at_ask) if at_ask else min(fits))
        for m in range(max(ask, len(prev) + 1), top + 1):  # a step the rounding swallows asks for more
            n_rm = n - keep_count(n, m, cfg.divisor, cfg.min_keep)
            if n_rm > len(prev):
                return n_rm
        return None

    def _round_step(self, units, cut, share: float, goal: float) -> float:
        """The smallest step on the `cfg.step` grid whose steps of every unit together would take the share to
        share - (share - goal) / commit: the round then picks the cheapest ~commit share of what it priced."""
        want = share - (share - goal) / self.commit
        k_max = max(1, int(math.floor(self.cfg.max_ratio / self.cfg.step + 1e-9)))
        for k in range(1, k_max + 1):
            step = k * self.cfg.step
            removed = {g.id: list(cut[g.id]) for g in units}
            for g in units:
                n_rm = self._next_cut(g, cut[g.id], step)
                if n_rm is not None:
                    removed[g.id] = list(range(n_rm))  # positions do not matter for FLOPs, counts do
            before, after = self.cost(self.groups, {k_: v for k_, v in removed.items() if v})
            if after / before <= want:
                return step
        return k_max * self.cfg.step

    def run(self) -> tuple[dict[int, list[int]], list[UnitDecision]]:
        cfg = self.cfg
        units = list(self.units)
        decisions = {g.id: UnitDecision(g.id, g.producers, len(g)) for g in units}
        cut: dict[int, list[int]] = {g.id: [] for g in units}
        lo, hi = self.target - self.tol, self.target + self.tol
        step = cfg.step
        with self.masks:
            original = self._losses()
            state = self._load_journal(units, original)  # PAGCP's checks, this class's fingerprint
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
            fine = step  # after the planned rounds: the grid step, halved when nothing fits above the floor
            while share > hi:
                left = self.planned - self.rounds
                goal = max(self.target, share * (self.target / share) ** (1 / left)) if left > 0 else self.target
                step = self._round_step(units, cut, share, goal) if left > 0 else fine
                priced = self._price_round(units, cut, base, share, step, decisions)
                if not priced:
                    break  # every unit is at the grid's largest ratio
                committed = 0
                for cost, gid, new, rel, _ in priced:
                    if self.share((gid, new)) < lo - 1e-12:
                        continue  # would undershoot the band: a smaller step of another unit may still fit
                    self.masks.set_removed(gid, new)
                    cut[gid] = list(new)
                    d = decisions[gid]
                    d.removed, d.ratio = sorted(int(c) for c in new), len(new) / d.channels
                    d.loss_ratios, d.threshold = rel.tolist(), cost  # the price this step was bought at
                    share = self.share()  # cuts of coupled groups do not add up: measured, not summed
                    committed += 1
                    if share <= max(goal, self.target) + (self.tol if goal <= self.target else 0):
                        break
                self.rounds += 1
                if committed:
                    base = self._losses()
                elif fine > 1.0 / max(len(g) for g in units):
                    fine /= 2  # nothing fits above the band's floor: finer steps (down to one channel)
                    self.planned = min(self.planned, self.rounds)
                else:
                    break
                if bar is not None:
                    bar.update(round(100 * (1 - share)) - bar.n)
                self._save_state(units, cut, original, base, fine, decisions)
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
            rel = loss_ratios(self._losses(), base)
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
        out = {"config": asdict(self.cfg), "target": self.target, "tol": self.tol, "commit": self.commit,
               "rounds": self.rounds_asked, "tasks": list(self.tasks), "units": [[g.id, len(g)] for g in units]}
        if self.cost is not estimate_flops:  # a latency budget: its cuts do not replay under another measure
            out["measure"] = "latency"
        return out

    def _save_state(self, units, cut, original, base, step, decisions) -> None:
        if self.journal is not None:
            self.journal.save({**self._fingerprint(units), "original": original.tolist(),
                               "base": np.asarray(base).tolist(), "step": step, "rounds": self.rounds,
                               "oracle_calls": self.oracle_calls,
                               "cut": {str(k): [int(c) for c in v] for k, v in cut.items()},
                               "decisions": [asdict(d) for d in decisions.values()]})
