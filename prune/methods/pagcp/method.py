# AGPL-3.0 License
"""--method pagcp: the calibration oracle, the units, and the pass (reference thresholds or a FLOPs target),
with the files a round keeps (units.txt, units.json, loss_curves.png). See README.md beside this file."""

from __future__ import annotations

import time
from dataclasses import replace

import torch.nn as nn

from models.loss import build_criterion
from prune.groups import Group, GroupSet
from prune.methods.base import Plan, PlanContext
from prune.methods.pagcp.budget import first_images, least_share, pass_line, prune_to_flops
from prune.methods.pagcp.config import PAGCPOptions
from prune.methods.pagcp.journal import Journal
from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches
from prune.methods.pagcp.reference import PAGCP, loss_ratios
from prune.surgery import estimate_flops
from utils.files import write_json, write_text
from utils.general import UsageError
from utils.plots import plot_loss_curves

JOURNAL = "units_progress.json"  # decisions so far: --resume continues after the last finished unit
BUDGET_JOURNAL = "budget_progress.json"  # the improved oracle's pass after the reference pass (reference_budget)


def units_of(model: nn.Module, groups: GroupSet, compression: str) -> list[Group]:
    """PAGCP's units: every prunable group (global), or those whose producers are all in the backbone."""
    units = groups.prunable
    if compression == "backbone":
        n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model)
        units = [g for g in units if all(int(p.split(".")[1]) < n_backbone for p in g.producers if p.startswith("model."))]
    return units


def check_reachable(groups: GroupSet, opts: PAGCPOptions, rounds: int) -> None:
    """Refuse (UsageError) a --target-flops that PAGCP cannot reach: per round, the grid's largest ratio in every unit."""
    least = least_share(groups, opts.ratio_step, opts.divisor, opts.min_channels) ** max(rounds, 1)
    if least > opts.target_flops + opts.flops_tol:
        raise UsageError(f"--target-flops {opts.target_flops} cannot be reached by PAGCP: its largest ratio in every "
                         f"group (--ratio-step grid, --divisor {opts.divisor}, --min-channels {opts.min_channels}) "
                         f"leaves {least:.3f} of the base FLOPs")


def plan(model: nn.Module, groups: GroupSet, ctx: PlanContext) -> Plan:
    """PAGCP: greedy sequential pruning of the groups under the per-task loss oracle, evaluated on a seeded
    calibration subset of training images with masks (departures from the reference: README.md).

    Returns:
        Plan whose info holds oracle_seconds, image_forwards, forward_equivalents and pagcp (target, units,
        loss_growth, guard_stopped, passes)."""
    opts = PAGCPOptions.from_namespace(ctx.settings)
    s = ctx.settings
    cfg = opts.policy(opts.round + ctx.round_index)
    units = units_of(model, groups, opts.compression)
    stride = int(max(model.stride.max(), 32))
    batches = calibration_batches(ctx.data, s.imgsz, opts.calib_images, min(s.batch_size, 16), s.seed, stride)
    criterion = build_criterion(model, None, s.imgsz)
    tasks = list(criterion.names)
    t = time.time()
    path = ctx.run_dir / JOURNAL
    if not ctx.resume and ctx.is_main:
        for name in (JOURNAL, "flops_search.json", BUDGET_JOURNAL):
            path.with_name(name).unlink(missing_ok=True)  # another run's (--exist-ok)
    journal = Journal(path, write=ctx.is_main) if ctx.resume or ctx.is_main else None
    reference_budget = getattr(s, "reference_budget", None)
    if opts.target_flops is not None:  # the threshold scale is searched (budget.py) or the greedy prices (greedy.py)
        target = ctx.round_target
        run = _to_flops(model, groups, units, opts, target, batches, criterion, tasks, ctx, journal)
        removed, decisions, policy, calls, forwards, passes, head, oracles = run
    else:
        oracles = [CalibrationOracle(model, batches, criterion, tasks, ctx.device, bn=opts.oracle_bn,
                                     prefix_cache=opts.prefix_cache, shard=True)]  # DDP: batches split, losses summed
        policy = PAGCP(model, groups, oracles[0], tasks, cfg, units=units, progress=ctx.is_main, journal=journal)
        removed, decisions = policy.run()
        calls = policy.oracle_calls  # including the calls made before an interruption
        forwards, passes, head, target = calls * oracles[0].images, None, "", None
        if reference_budget is not None and removed:  # the reference's thresholds set the FLOPs share, the improved
            # oracle decides what goes
            before, after = estimate_flops(groups, removed)
            share = target = after / before
            opts = replace(opts, target_flops=share, topk=1.0, **reference_budget)
            how = ", ".join(f"{k} {v}" for k, v in reference_budget.items())
            ctx.log(f"PAGCP reference pass (rate {cfg.initial_rate}, thres {cfg.initial_thres}): FLOPs x{share:.3f} "
                    f"after {calls} oracle calls; the improved oracle ({how}) now prunes to that share "
                    "(--reference-protocol keeps the reference pass's cut)")
            budget_journal = journal.sibling(BUDGET_JOURNAL) if journal is not None else None
            run = _to_flops(model, groups, units, opts, share, batches, criterion, tasks, ctx, budget_journal)
            removed, decisions, policy, calls2, forwards2, passes, head2, oracles2 = run
            head = (f"reference pass: {calls} oracle calls, {forwards} image-forwards, FLOPs x{share:.3f}\n"
                    + head2)
            calls, forwards, oracles = calls + calls2, forwards + forwards2, oracles + oracles2
            cfg = opts.policy(opts.round + ctx.round_index)
    seconds = time.time() - t  # the greedy pass(es): every oracle call and mask change (this process)
    growth = float(max(loss_ratios(policy.final_losses, policy.original_losses)))
    equivalents = sum(o.flop_forwards for o in oracles)
    info = {"oracle_seconds": seconds, "image_forwards": forwards,
            "forward_equivalents": round(equivalents),  # this run's calls only (a resumed pass replayed some)
            "pagcp": {"target": target, "units": len(units), "loss_growth": growth,
                      "guard_stopped": policy.guard_stopped if cfg.guard and opts.target_flops is None else -1,
                      "passes": passes}}
    if not ctx.is_main:
        return Plan(removed, info)
    rows = [d.row(tasks) for d in decisions]
    write_text(ctx.run_dir / "units.txt",
               f"PAGCP rate {cfg.initial_rate} thres {cfg.initial_thres} exp {opts.exp} lambda {policy.lam:.5f} "
               f"topk {opts.topk}\n{head}"
               f"oracle calls {calls}, image-forwards {forwards} ({equivalents:,.0f} full-model equivalents "
               f"by FLOPs: the prefix cache runs only the layers a unit can change), {seconds:.1f}s; "
               f"largest task loss x{growth:.3f} of the unpruned model's\n"
               "unit  ch -> kept  ratio  threshold  tripped-by  accepted loss/base  producers\n" + "\n".join(rows) + "\n")
    write_json([vars(d) for d in decisions], ctx.run_dir / "units.json")
    plot_loss_curves([vars(d) for d in decisions], tasks, ctx.run_dir / "loss_curves.png")
    resumed = f", {policy.resumed_units} units replayed from {JOURNAL}" if policy.resumed_units else ""
    ctx.log(f"PAGCP: {len(removed)} of {len(units)} units pruned, {calls} oracle calls, "
            f"{forwards} image-forwards ({seconds:.1f}s{resumed}); decisions in units.txt")
    return Plan(removed, info)


def _to_flops(model, groups, units, opts: PAGCPOptions, target: float, batches, criterion, tasks, ctx, journal):
    """PAGCP to the FLOPs share `target` (budget.py); returns (removed, decisions, policy, oracle calls,
    image-forwards, passes, units.txt head, oracles)."""
    def make_oracle(cheap: bool):
        if not cheap:
            return oracles[0]
        oracles.append(CalibrationOracle(model, first_images(batches, opts.search_images), criterion, tasks,
                                         ctx.device, bn=opts.oracle_bn, prefix_cache=opts.prefix_cache, shard=True))
        return oracles[-1]

    oracles = [CalibrationOracle(model, batches, criterion, tasks, ctx.device, bn=opts.oracle_bn,
                                 prefix_cache=opts.prefix_cache, shard=True)]  # DDP: batches split, losses summed
    cfg = opts.policy(opts.round + ctx.round_index)
    res = prune_to_flops(model, groups, make_oracle, tasks, cfg, opts.budget(target), units=units,
                         progress=ctx.is_main, journal=journal, log=ctx.log)
    head = (f"PAGCP to FLOPs x{target:.3f} +- {opts.flops_tol} ({opts.flops_budget}): reached x{res.share:.3f}\n"
            + "".join(f"  {pass_line(p)}\n" for p in res.passes))
    return (res.removed, res.decisions, res.policy, res.oracle_calls, res.image_forwards, res.passes, head,
            oracles)
