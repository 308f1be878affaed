# AGPL-3.0 License
"""compress.py --target-speedup S / --target-latency MS: prune until the model is that fast on the user's runtime.

FLOPs are a poor proxy for latency on a CPU runtime (a cut that leaves 13 of 16 channels runs as slow as 16); here
the runtime itself is the measure:

1. the latency table (prune/latency_table.py): every conv timed alone on `--runtime` at the widths a plan may
   keep, cached per runtime/threads/batch/image size/architecture;
2. the base model is measured whole (ONNX, batch `--runtime-batch`, `--runtime-threads` threads): the target in ms
   is base / S (or MS);
3. PAGCP's budgeted greedy prices each step's loss growth per predicted *millisecond* saved (the table's cost
   replaces conv FLOPs, prune/methods/pagcp/greedy.py) and keeps only the channel counts the runtime rewards
   (`LatencyTable.group_counts`, instead of --divisor), aiming at the predicted share target / current;
4. after each round base and pruned are timed interleaved (engine/latency.py time_interleaved); when the measured
   latency is above the target by more than `latency_tol`, up to `latency_topups` more rounds prune the result
   (they only remove more), each re-targeted from what was measured.

Refused in one line: two targets, a speedup <= 1 or a latency <= 0, a target the base already meets, a target no
plan can reach (every group at the grid's largest cut), methods other than PAGCP, an unknown or absent runtime.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from engine.exporter import export_onnx, prepare
from engine.latency import time_interleaved
from prune.latency_table import load_or_build
from prune import build_groups
from prune.groups import GroupSet
from prune.latency import LatencyTable
from prune.methods.pagcp.budget import least_share
from utils.general import LOGGER, UsageError
from utils.runtimes import check_runtime, default_threads, median_ms, runtime_call


def wanted(opt) -> bool:
    """Whether the run prunes to a latency target."""
    return getattr(opt, "target_speedup", None) is not None or getattr(opt, "target_latency", None) is not None


def check_options(opt) -> None:
    """Refuse bad latency-target flags in one line (UsageError); fills --runtime-threads' default (the cores)."""
    if not wanted(opt):
        return
    given = [f for f, v in (("--target-flops", opt.target_flops), ("--target-speedup", opt.target_speedup),
                            ("--target-latency", opt.target_latency)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give only one of --target-flops, --target-speedup, --target-latency (got {', '.join(given)})")
    if opt.target_speedup is not None and not opt.target_speedup > 1:
        raise UsageError(f"--target-speedup must be > 1 (x1 is the base model), got {opt.target_speedup}")
    if opt.target_latency is not None and not opt.target_latency > 0:
        raise UsageError(f"--target-latency must be > 0 ms, got {opt.target_latency}")
    if opt.method != "pagcp":
        raise UsageError(f"--target-speedup/--target-latency prune with --method pagcp (its oracle prices loss per "
                         f"millisecond saved); --method {opt.method} takes --target-flops")
    if getattr(opt, "flops_budget", "greedy") != "greedy":
        raise UsageError("--target-speedup/--target-latency use PAGCP's budgeted greedy: leave --flops-budget greedy")
    if opt.runtime_batch < 1:
        raise UsageError(f"--runtime-batch must be >= 1, got {opt.runtime_batch}")
    if opt.runtime_threads is not None and opt.runtime_threads < 1:
        raise UsageError(f"--runtime-threads must be >= 1, got {opt.runtime_threads}")
    check_runtime(opt.runtime)
    if not opt.runtime_threads:
        opt.runtime_threads = default_threads()


@dataclass
class LatencyGoal:
    """The run's latency target and its measurements (see the module docstring)."""

    runtime: str
    threads: int
    batch: int
    imgsz: int
    table: LatencyTable
    table_info: dict
    base_ms: float
    target_ms: float
    tol: float
    topups: int
    repeats: int
    divisor: int = 1
    asked: str = ""
    speedup: float | None = None  # --target-speedup (None: --target-latency)
    measured: list[dict] = field(default_factory=list)  # after each round: base_ms, pruned_ms, speedup
    folder: tempfile.TemporaryDirectory | None = None

    @classmethod
    def create(cls, opt, model: nn.Module, d: dict) -> LatencyGoal:
        """The table (cached or timed now), the base model measured whole, the target in ms; refuses a target
        the base meets or no plan reaches. d: compress defaults (latency_tol, latency_topups, latency_repeats)."""
        groups = build_groups(model, imgsz=opt.imgsz, ignore=opt.ignore)
        table, info = load_or_build(model, groups, opt.runtime, opt.runtime_threads, opt.runtime_batch, opt.imgsz)
        goal = cls(opt.runtime, opt.runtime_threads, opt.runtime_batch, opt.imgsz, table, info, 0.0, 0.0,
                   float(d["latency_tol"]), int(d["latency_topups"]), int(d["latency_repeats"]), max(opt.divisor, 1),
                   folder=tempfile.TemporaryDirectory(prefix="yoloc_target_"))
        base = goal.call(model, "base")
        goal.base_ms = median_ms(base, warmup=5, repeats=goal.repeats) / goal.batch
        if opt.target_speedup is not None:
            goal.target_ms, goal.asked = goal.base_ms / opt.target_speedup, f"--target-speedup {opt.target_speedup:g}"
            goal.speedup = float(opt.target_speedup)
        else:
            goal.target_ms, goal.asked = float(opt.target_latency), f"--target-latency {opt.target_latency:g}"
        LOGGER.info(f"latency target: base {goal.base_ms:.2f} ms per image on {goal.where()}, target "
                    f"{goal.target_ms:.2f} ms (x{goal.base_ms / goal.target_ms:.2f})")
        if goal.target_ms >= goal.base_ms * (1 - goal.tol):
            raise UsageError(f"{goal.asked}: the base model already runs at {goal.base_ms:.2f} ms per image on "
                             f"{goal.where()} (target {goal.target_ms:.2f} ms): nothing to prune")
        least = least_share(groups, opt.ratio_step, 1, opt.min_channels, None, table.cost) ** max(opt.rounds, 1)
        if least * goal.base_ms > goal.target_ms * (1 + goal.tol):
            raise UsageError(f"{goal.asked} cannot be reached: every group cut to its largest ratio is predicted at "
                             f"{least * goal.base_ms:.2f} ms (x{1 / least:.2f}) on {goal.where()}; the best found is "
                             f"x{1 / least:.2f}, ask for less or lower --min-channels")
        return goal

    def where(self) -> str:
        return f"{self.runtime} CPU, {self.threads} threads, batch {self.batch}, {self.imgsz}x{self.imgsz}"

    def call(self, model: nn.Module, tag: str):
        """A callable running `model` once on the runtime (its ONNX export, kept for the goal's lifetime)."""
        f = Path(self.folder.name) / f"{tag}.onnx"
        x = torch.rand(self.batch, 3, self.imgsz, self.imgsz, generator=torch.Generator().manual_seed(0))
        export_onnx(prepare(model, "cpu"), x, f, opset=17)  # prepare: a fused copy
        return runtime_call(self.runtime, f, self.threads, x.numpy())

    def goal_ms(self) -> float:
        """The latency to reach, in the last measurement's terms: --target-speedup divides the base as measured
        beside the pruned model (drift of the machine hits both), --target-latency is absolute."""
        if self.speedup and self.measured:
            return self.measured[-1]["base_ms"] / self.speedup
        return self.target_ms

    def met(self) -> bool:
        return bool(self.measured) and self.measured[-1]["pruned_ms"] <= self.goal_ms() * (1 + self.tol)

    def round_share(self, rounds_left: int) -> float:
        """The predicted latency share (of the round's input model) the round aims at: what the last measurement
        leaves to do, spread over the rounds left."""
        now = self.measured[-1]["pruned_ms"] if self.measured else self.base_ms
        return min(1.0, (self.goal_ms() / now) ** (1 / max(rounds_left, 1)))

    def settings(self, groups: GroupSet) -> dict:
        """The plan's settings for PAGCP (prune.methods.pagcp.config.PAGCPOptions): the table's cost and the kept
        counts the runtime rewards (multiples of --divisor only, when one is given)."""
        counts = {gid: [c for c in cs if c % self.divisor == 0 or c == len(groups.groups[gid])]
                  for gid, cs in self.table.group_counts(groups).items()}
        return {"latency_cost": self.table.cost, "latency_counts": counts}

    def measure(self, base: nn.Module, pruned: nn.Module, k: int) -> dict:
        """Base and pruned timed interleaved on the runtime (median ms per image); recorded and returned."""
        fns = {"base": self.call(base, "base"), "pruned": self.call(pruned, f"round{k}")}
        times = time_interleaved(fns, 5, self.repeats)
        b, p = (float(np.median(times[n])) * 1e3 / self.batch for n in ("base", "pruned"))
        row = {"round": k, "base_ms": b, "pruned_ms": p, "speedup": b / p}
        self.measured.append(row)
        LOGGER.info(f"round {k}: measured on {self.where()}: base {b:.2f} ms, pruned {p:.2f} ms, x{b / p:.2f} "
                    f"(target {self.goal_ms():.2f} ms{'' if self.met() else ', not met'})")
        return row

    def summary(self, flops_ratio: float | None = None) -> dict:
        last = self.measured[-1] if self.measured else {}
        base, pruned = last.get("base_ms"), last.get("pruned_ms")
        factor = 1 / flops_ratio if flops_ratio else None
        speedup = base / pruned if base and pruned else None
        return {"runtime": self.runtime, "backend": self.runtime, "device": "cpu", "batch": self.batch,
                "imgsz": self.imgsz, "threads": self.threads, "repeats": self.repeats, "asked": self.asked,
                "target_ms": self.target_ms, "goal_ms": self.goal_ms(), "base_ms": base, "pruned_ms": pruned, "speedup": speedup,
                "met": self.met(), "tolerance": self.tol, "base_ms_alone": self.base_ms, "rounds": self.measured,
                "flops_factor": factor, "speedup_over_flops_factor": speedup / factor if speedup and factor else None,
                "table": {**self.table_info, "overhead_ms": self.table.meta.get("overhead_ms")}}

    def line(self) -> str:
        """compress.py's last console line in latency mode."""
        s = self.summary()
        if s["pruned_ms"] is None:
            return f"latency target {self.asked}: not measured"
        verdict = "met" if s["met"] else (f"NOT met after {len(self.measured)} round(s): the best found is "
                                          f"x{s['speedup']:.2f}")
        table = "cached" if self.table_info["cached"] else f"built in {self.table_info['seconds']:.0f}s"
        return (f"latency on {self.where()}: base {s['base_ms']:.2f} ms -> pruned {s['pruned_ms']:.2f} ms, speedup "
                f"x{s['speedup']:.2f} (measured interleaved; target {self.goal_ms():.2f} ms from {self.asked}: "
                f"{verdict}; latency table {table})")

    def markdown(self) -> str:
        rows = "".join(f"| {r['round']} | {r['base_ms']:.2f} | {r['pruned_ms']:.2f} | x{r['speedup']:.2f} |\n"
                       for r in self.measured)
        return (f"\n## Latency target\n\n{self.line()}\n\n| round | base ms | pruned ms | speedup |\n|---|---|---|---|\n"
                f"{rows}\nLatency table: `{self.table_info['file']}`.\n")
