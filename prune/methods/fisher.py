# AGPL-3.0 License
"""Group Fisher pruning (seeds 001/003): prune during training by the Fisher information of channel masks.

Per sample n and channel class c, t = sum_hw A * dL/dA at the mask; with one mask value per sample and
class shared by every site of the class, autograd gives exactly that sum over all coupled members
before squaring. F[c] += sum_n t^2 over `interval` iterations; then the channel(s) with the lowest
F / cost (cost = FLOPs or activation memory the channel removes) are masked and F is reset, until the
FLOPs target is reached. A group's last `min_keep` channels are never removed.

Use it inside any training loop:

    gf = GroupFisher(model, groups, target_flops=0.5).attach()
    for batch in loader:
        gf.before_forward(batch_size)       # fresh per-sample masks requiring grad
        loss = criterion(model(x), batch); loss.backward()
        gf.after_backward()                 # accumulate; every `interval` steps prune the weakest channel
        optimizer.step()
        if gf.done: break
    removed = gf.removed()                  # {group id: positions} for prune.surgery.apply_removal

Under DDP each process sees its own samples: `reduce` (utils.distributed.all_reduce_sum) sums the
accumulators over the processes before a channel is chosen, so every process masks the same one.
"""

from __future__ import annotations

import time
from typing import Callable, Literal, get_args

import numpy as np
import torch
import torch.nn as nn

from prune.groups import GroupSet
from prune.masks import ChannelMasks
from prune.methods.base import Plan, PlanContext
from prune.plans import min_flops_share
from prune.surgery import estimate_flops
from utils import distributed as ddp
from utils.files import write_json

FisherNorm = Literal["flops", "act", "none"]
FISHER_NORMS: tuple[str, ...] = get_args(FisherNorm)


class GroupFisher:
    def __init__(self, model: nn.Module, groups: GroupSet, target_flops: float = 0.5, norm: str = "flops",
                 interval: int = 10, channels_per_step: int = 1, min_keep: int = 1,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if norm not in FISHER_NORMS:
            raise ValueError(f"--fisher-norm must be flops, act or none, got '{norm}'")
        if not 0 < target_flops < 1:
            raise ValueError(f"--target-flops must be in (0, 1), got {target_flops}")
        self.model, self.groups, self.reduce = model, groups, reduce
        self.masks = ChannelMasks(model, groups)
        self.target, self.interval, self.per_step, self.min_keep = target_flops, interval, channels_per_step, min_keep
        n = len(self.masks.values)
        self.fisher = torch.zeros(n, dtype=torch.float64)
        self.prunable = torch.zeros(n, dtype=torch.bool)
        self.cost = torch.ones(n, dtype=torch.float64)
        self.group_of = np.full(n, -1)
        for g in groups.prunable:
            cost = g.flops if norm == "flops" else g.act if norm == "act" else np.ones(len(g))
            for pos, r in enumerate(g.classes):
                i = self.masks.index[r]
                self.prunable[i] = True
                self.cost[i] = max(float(cost[pos]), 1e-12)
                self.group_of[i] = g.id
        self.steps = 0
        self.flops_base = estimate_flops(groups, {})[0]
        self.history: list[tuple[int, int, int]] = []  # (step, group, position) of every masked channel
        # refuse an unreachable target now: training would otherwise never reach `done` and run all its epochs
        least = min_flops_share(groups, 1, min_keep)
        if least > target_flops:
            raise ValueError(f"--target-flops {target_flops:.3f} cannot be reached: keeping {max(min_keep, 1)} "
                             f"channel(s) per group (--min-channels) leaves at least {least:.3f} of the base FLOPs")

    def attach(self) -> GroupFisher:
        self.masks.attach()
        return self

    def detach(self) -> None:
        self.masks.detach()
        self.masks.per_sample = None

    def before_forward(self, batch_size: int, device=None) -> None:
        self.masks.start_per_sample(batch_size, device)

    def after_backward(self) -> None:
        ps = self.masks.per_sample
        if ps is None or ps.grad is None:
            return
        self.fisher += self.masks.fisher(ps.grad)
        self.masks.per_sample = None
        self.steps += 1
        if self.steps % self.interval == 0 and not self.done:
            self.prune_step()

    @property
    def flops_share(self) -> float:
        return estimate_flops(self.groups, self.removed())[1] / self.flops_base

    @property
    def done(self) -> bool:
        return self.flops_share <= self.target

    def prune_step(self) -> list[tuple[int, int]]:
        """Mask the `channels_per_step` globally least important channels (Fisher / cost); reset F."""
        if self.reduce is not None:  # (n,) float64 summed over the DDP processes: the same choice on each
            self.fisher = self.reduce(self.fisher)
        alive = ((self.masks.values > 0) & self.prunable).numpy()
        kept = dict(zip(*np.unique(self.group_of[alive], return_counts=True)))
        score = (self.fisher / self.cost).numpy()
        order = [i for i in np.argsort(score, kind="stable") if alive[i]]
        pruned = []
        for i in order:
            if len(pruned) >= self.per_step:
                break
            gid = int(self.group_of[i])
            if kept[gid] <= self.min_keep:
                continue
            self.masks.values[i] = 0.0
            kept[gid] -= 1
            pos = self.groups.groups[gid].classes.index(self._root(i))
            pruned.append((gid, pos))
            self.history.append((self.steps, gid, pos))
        self.fisher.zero_()
        return pruned

    def _root(self, i: int) -> int:
        if not hasattr(self, "_roots"):
            self._roots = {v: k for k, v in self.masks.index.items()}
        return self._roots[i]

    def removed(self) -> dict[int, list[int]]:
        return self.masks.removed()


def plan(model: nn.Module, groups: GroupSet, ctx: PlanContext) -> Plan:
    """--method fisher: train with per-sample channel masks (ctx.train, the run's training options), accumulate
    the Fisher information of every channel class, and mask the globally least important one(s) every
    --interval steps until ctx.round_target is reached. The fine-tuning (--epochs) runs after this phase, on the
    materialized model. Writes fisher.json in ctx.run_dir (rank 0).

    Returns:
        Plan whose info holds fisher_epochs (training epochs the phase took, None when unknown)."""
    s = ctx.settings
    gf = GroupFisher(model, groups, target_flops=ctx.round_target, norm=s.fisher_norm, interval=s.interval,
                     channels_per_step=s.channels_per_step, min_keep=s.min_channels,
                     reduce=ddp.all_reduce_sum).attach()  # DDP: accumulators summed over the processes

    def before(trainer):
        gf.before_forward(trainer.batch_images, device=next(model.parameters()).device)

    phase = {}

    def after(trainer):
        gf.after_backward()
        phase["nb"] = trainer.nb
        if gf.done:
            trainer.stop = True

    t = time.time()
    try:
        ctx.train(model, {"on_train_batch_start": [before], "on_after_backward": [after]}, epochs=10_000,
                  noval=True, nosave=True, patience=10_000, save_dir=str(ctx.run_dir / "fisher"))
    finally:
        gf.detach()
    removed = gf.removed()
    epochs = gf.steps / phase["nb"] if phase.get("nb") else None  # the phase trains: a comparison's budget counts it
    if ctx.is_main:
        write_json({"steps": gf.steps, "epochs": epochs, "flops_share": gf.flops_share, "history": gf.history},
                   ctx.run_dir / "fisher.json")
    ctx.log(f"Group Fisher: {len(gf.history)} channels masked in {gf.steps} training batches"
            f"{f' ({epochs:.1f} epochs)' if epochs else ''} ({time.time() - t:.0f}s), "
            f"FLOPs share {gf.flops_share:.3f}")
    model.eval()
    return Plan(removed, {"fisher_epochs": epochs})
