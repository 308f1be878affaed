# AGPL-3.0 License
"""Gradual pruning inside a fine-tune: the FLOPs target reached in small cuts spread over its first part.

compress.py's default when it fine-tunes (`--epochs > 0`) to a FLOPs target with PAGCP or a criterion (l1, l2,
taylor, ...); `--one-shot` prunes once before fine-tuning instead, and Group Fisher prunes during training its own
way. Cut k of N (N = gradual_steps) comes after optimizer step round(k * gradual_until * T / N) of the T steps of
the fine-tune and keeps target^(k/N) of the round's input FLOPs (geometric interpolation from 1 to the target; each
cut aims at that share of what the model has now, so rounding does not compound). Each cut is priced by the method
itself on the current training weights (PAGCP: its oracle with a step target on gradual_calib_images images,
batch BN statistics as the target oracle does), cut physically in the training model and its EMA alike
(Trainer.apply_cut rebuilds the optimizer and the DDP wrapper), and training goes on; the epochs after the last
cut recover, and the best epoch is only chosen among them.

The schedule's position and the structure travel in the trainer's checkpoints (last.pt: the pruned model, its
optimizer, and `extra['gradual']`), so `--resume` after an interruption continues at the next cut; a resume whose
schedule differs (another number of cuts, share, target or length) is refused. Under DDP every process prices the
cut (PAGCP's oracle shares its batches) and rank 0's plan is applied everywhere (utils.distributed.agree).

GradualPruner only needs these of the trainer it is attached to (engine/trainer.py): `model`, `opt_steps`,
`total_steps`, `main`, `extra_state` / `resumed_state` (dicts saved in and restored from its checkpoints),
`best_fitness` / `best_epoch`, and `apply_cut(fn)`; engine/gradual.py runs it inside compress.py's rounds.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch.nn as nn

from prune import build_groups
from prune.methods import PlanContext, get_method
from prune.methods.criteria import CRITERIA
from prune.surgery import apply_removal, estimate_flops
from utils import distributed as ddp
from utils.general import LOGGER, UsageError

STATE_VERSION = 1
GRADUAL_METHODS: tuple[str, ...] = ("pagcp", *CRITERIA)
SCHEDULE_KEYS = ("one_shot", "gradual_steps", "gradual_until", "target_flops", "epochs", "schedule")


def wanted(opt, goal=None) -> bool:
    """True when compress.py prunes gradually: it fine-tunes, has a FLOPs target, the method prices cuts on
    current weights (PAGCP or a criterion) and neither --one-shot nor a latency target (its own rounds) is set."""
    return (opt.epochs > 0 and not opt.one_shot and opt.target_flops is not None and goal is None
            and opt.method in GRADUAL_METHODS and getattr(opt, "pruning_params", None) is None)


def check_options(opt) -> None:
    """Refuse bad gradual-pruning keys in one line."""
    if opt.gradual_steps < 1:
        raise UsageError(f"--gradual-steps must be >= 1, got {opt.gradual_steps}")
    if not 0 < opt.gradual_until <= 1:
        raise UsageError(f"--gradual-until must be in (0, 1], got {opt.gradual_until}")
    if opt.gradual_calib_images < 1:
        raise UsageError(f"gradual_calib_images must be >= 1, got {opt.gradual_calib_images}")


def cut_steps(total_steps: int, n: int, until: float) -> list[int]:
    """Optimizer steps after which cuts 1..n happen: round(k * until * total_steps / n). Raises UsageError when
    the fine-tune has fewer than n optimizer steps before `until` of it."""
    room = int(until * total_steps)
    if n > room:
        raise UsageError(f"gradual pruning needs {n} optimizer steps before --gradual-until {until} of the fine-tune, "
                         f"which has {total_steps} steps in all ({room} before it): lower --gradual-steps, raise "
                         "--epochs or --gradual-until, or prune with --one-shot")
    return [max(round(k * until * total_steps / n), k) for k in range(1, n + 1)]


def check_resume(cli: dict, saved: dict, given) -> None:
    """--resume: refuse a command line that changes the pruning schedule of the run it continues (`saved`: its
    opt.json; `given`: the option names typed on the command line)."""
    for k in SCHEDULE_KEYS:
        if k in given and k in saved and cli.get(k) != saved[k]:
            raise UsageError(f"--resume: the run was started with {k} {saved[k]}, not {cli.get(k)}; a resume cannot "
                             "change the pruning schedule: drop the flag, or start a new run")


class GradualPruner:
    """Trainer callbacks that cut the model in `n` steps during its fine-tune (see the module docstring).

    opt: the compression options; data/device: the run's; run_dir: the round's folder (each cut's method files go
    to run_dir/gradual/cut_k); target: the round's FLOPs share of its input; measure(model) -> dict: validation of
    the model after the last cut (rank 0)."""

    def __init__(self, opt, data: dict, device, run_dir: Path, target: float,
                 measure: Callable[[nn.Module], dict] | None = None):
        self.opt, self.data, self.device, self.run_dir, self.target = opt, data, device, Path(run_dir), float(target)
        self.measure = measure
        self.n = int(opt.gradual_steps)
        self.steps: list[int] = []
        self.state: dict = {}
        self.t_start = 0.0

    def callbacks(self) -> dict:
        return {"on_train_start": [self.start], "on_optimizer_step": [self.step], "on_train_end": [self.end]}

    def signature(self, total_steps: int) -> dict:
        return {"n": self.n, "until": float(self.opt.gradual_until), "target": self.target, "total": int(total_steps),
                "method": self.opt.method}

    # ------------------------------------------------------------------ callbacks
    def start(self, trainer) -> None:
        self.t_start = time.time()
        sig = self.signature(trainer.total_steps)
        self.steps = cut_steps(trainer.total_steps, self.n, self.opt.gradual_until)
        saved = trainer.resumed_state.get("gradual")
        if saved:
            if saved.get("version") != STATE_VERSION or saved.get("signature") != sig:
                raise UsageError(f"--resume: this fine-tune was pruning on the schedule {saved.get('signature')}, not "
                                 f"{sig}; a resume cannot change the schedule: start a new run")
            self.state = saved
        else:
            groups = build_groups(trainer.model, imgsz=self.opt.imgsz, ignore=self.opt.ignore)
            self.state = {"version": STATE_VERSION, "signature": sig, "done": 0, "base_flops": estimate_flops(groups, {})[0],
                          "kept": {str(g.id): list(range(len(g))) for g in groups.prunable}, "seconds": 0.0,
                          "base_sizes": {str(g.id): len(g) for g in groups.prunable},
                          "oracle_seconds": 0.0, "history": [], "pruned_metrics": None}
        trainer.extra_state["gradual"] = self.state
        if trainer.main and not saved:
            LOGGER.info(f"gradual pruning to x{self.target:.3f} FLOPs in {self.n} cuts after optimizer steps "
                        f"{', '.join(map(str, self.steps))} of {trainer.total_steps} (without --gradual: one cut before)")

    def step(self, trainer) -> None:
        k = self.state["done"]
        if k < self.n and trainer.opt_steps >= self.steps[k]:
            self.cut(trainer, k + 1)

    def end(self, trainer) -> None:
        if trainer.main and self.state.get("done"):
            spent = max(time.time() - self.t_start, 1e-9)
            LOGGER.info(f"gradual pruning: {self.state['done']} cuts, FLOPs x{self.share():.3f} of the input "
                        f"(target {self.target:.3f}); pricing took {self.state['seconds']:.1f}s, "
                        f"{100 * self.state['seconds'] / spent:.0f}% of this fine-tune's {spent:.0f}s")

    # ------------------------------------------------------------------ one cut
    def share(self) -> float:
        return self.state["history"][-1]["share"] if self.state.get("history") else 1.0

    def cut(self, trainer, k: int) -> None:
        """Cut k of n: price on the current weights, cut the model and the EMA, reset the best epoch."""
        t0 = time.time()
        model = trainer.model
        groups = build_groups(model, imgsz=self.opt.imgsz, ignore=self.opt.ignore)
        now = estimate_flops(groups, {})[0] / self.state["base_flops"]
        aim = self.target ** (k / self.n)
        step_target = min(1.0, aim / now)
        removed = {}
        if step_target < 1.0 and groups.prunable:
            settings = SimpleNamespace(**{**vars(self.opt), "calib_images": self.opt.gradual_calib_images,
                                          "search_images": self.opt.gradual_calib_images, "pricing_rounds": 1,
                                          "seed": self.opt.seed + k})
            ctx = PlanContext(settings=settings, data=self.data, device=self.device,
                              run_dir=self.run_dir / "gradual" / f"cut_{k}", round_index=0, round_target=step_target,
                              resume=False, is_main=ddp.is_main(), train=None, log=LOGGER.info)
            if ddp.is_main():
                ctx.run_dir.mkdir(parents=True, exist_ok=True)
            plan = get_method(self.opt.method)(model, groups, ctx)
            removed = ddp.agree(plan.removed, f"gradual cut {k}")
            self.state["oracle_seconds"] += float(plan.info.get("oracle_seconds") or 0.0)
        self._track(groups, removed)
        trainer.apply_cut(lambda m: apply_removal(m, groups, removed))
        trainer.model.train()
        share = estimate_flops(groups, removed)[1] / self.state["base_flops"]
        seconds = time.time() - t0
        self.state["seconds"] += seconds
        self.state["history"].append({"cut": k, "step": trainer.opt_steps, "aim": aim, "share": share,
                                      "channels": int(sum(map(len, removed.values()))), "seconds": seconds})
        self.state["done"] = k
        trainer.best_fitness, trainer.best_epoch = 0.0, -1  # the best epoch is one with the final structure
        if trainer.main:
            LOGGER.info(f"gradual cut {k}/{self.n} after step {trainer.opt_steps}: FLOPs x{share:.3f} of the input "
                        f"(aim {aim:.3f}), {self.state['history'][-1]['channels']} channels ({seconds:.1f}s)")
        if k == self.n and self.measure is not None and trainer.main:
            self.state["pruned_metrics"] = self.measure(trainer.model)
        trainer.extra_state["gradual"] = self.state

    def _track(self, groups, removed: dict) -> None:
        """Keep the base-model positions of every group's surviving channels (group ids are stable across
        rebuilds of the same graph; a mismatch drops the record)."""
        kept = self.state.get("kept")
        if kept is None:
            return
        if {str(g.id) for g in groups.prunable} != set(kept) or any(len(kept[str(g.id)]) != len(g)
                                                                   for g in groups.prunable):
            self.state["kept"] = None
            return
        for gid, pos in removed.items():
            drop = set(int(p) for p in pos)
            kept[str(gid)] = [c for i, c in enumerate(kept[str(gid)]) if i not in drop]

    def info(self) -> dict:
        """The round's pruning record (as compress.py's one-shot stage writes it in pruned.json)."""
        st = self.state
        kept, sizes = st.get("kept"), st.get("base_sizes") or {}
        removed = {int(g): sorted(set(range(sizes[g])) - set(v)) for g, v in kept.items() if len(v) < sizes[g]} \
            if kept is not None else None
        floor = sum(len(v) <= max(self.opt.min_channels, 1) for v in kept.values()) if kept is not None else 0
        return {"pruned_metrics": st.get("pruned_metrics"), "flops_share": self.share(), "target_share": self.target,
                "divisor": self.opt.divisor, "prune_seconds": st.get("seconds", 0.0),
                "oracle_seconds": st.get("oracle_seconds"), "image_forwards": None, "forward_equivalents": None,
                "pagcp": None, "groups_pruned": len(removed) if removed is not None else None,
                "channels_removed": sum(h["channels"] for h in st.get("history", [])), "groups_at_floor": floor,
                "groups": [{"group": int(g), "before": sizes[g], "after": len(v)} for g, v in kept.items()]
                if kept is not None else None,
                "gradual": {"cuts": st.get("history", []), "removed": removed}}
