# AGPL-3.0 License
"""One-shot compression run: load -> validate -> build groups -> score -> plan -> cut -> save -> validate.

The run folder (runs/compress/exp*) receives pruned.pt (a normal checkpoint carrying the pruned
structure), channels.json (remaining channels per layer), groups.txt and summary.json
(params, gflops, map50, map50_95 before and after).
"""

from __future__ import annotations

import copy
import datetime
import time
from pathlib import Path

import torch
import torch.nn as nn

from engine.data import build_val_loader, check_dataset
from engine.validator import ValResult, format_table, validate, write_json
from models.loader import fuse_model, load_model, model_family
from prune import build_groups
from prune.importance import get_criterion
from prune.surgery import apply_removal, channel_table, estimate_flops, group_sizes
from prune.uniform import plan_global, plan_uniform, solve_ratio_for_flops
from utils.checkpoint import save_checkpoint
from utils.flops import count_params, gflops
from utils.general import LOGGER, UsageError, increment_path, select_device

ONE_SHOT_METHODS = ("pagcp", "l1", "l2", "l1_largest", "l2_largest", "bn", "bnl1", "random", "taylor", "slim")


class Evaluator:
    """Validation on a fixed loader (built once, reused for before/after)."""

    def __init__(self, data: dict, imgsz: int, batch_size: int, device, workers: int, stride: int = 32):
        self.data, self.device = data, device
        self.loader = build_val_loader(data, "val", imgsz, batch_size, stride, workers)

    def __call__(self, model: nn.Module, progress: bool = True) -> ValResult:
        m = fuse_model(copy.deepcopy(model).to(self.device))
        res, _ = validate(m, self.loader, self.data["names"], device=self.device, progress=progress)
        return res


def check_args(opt) -> None:
    if opt.method not in ONE_SHOT_METHODS:
        raise UsageError(f"unknown --method '{opt.method}': choose from {', '.join(ONE_SHOT_METHODS)}")
    if opt.method == "pagcp":
        if opt.initial_thres <= 1:
            raise UsageError(f"--initial_thres must be > 1 (a cap on cumulative loss growth), got {opt.initial_thres}")
        if not 0 < opt.initial_rate < 1:
            raise UsageError(f"--initial_rate must be in (0, 1), got {opt.initial_rate}")
        if not 0 < opt.topk <= 1:
            raise UsageError(f"--topk must be in (0, 1], got {opt.topk}")
        return
    budgets = [opt.target_flops is not None, opt.ratio is not None, opt.pruning_params is not None]
    if opt.method == "slim":
        budgets += [opt.slim_threshold is not None, opt.slim_percent is not None]
    if sum(budgets) != 1:
        extra = ", --slim-threshold T, --slim-percent P" if opt.method == "slim" else ""
        raise UsageError(f"give exactly one of --target-flops F, --ratio R, --pruning-params P{extra}")
    if opt.pruning_params is not None:
        from prune.sensitivity import parse_pruning_params

        try:
            opt.pruning_params = parse_pruning_params(opt.pruning_params)
        except (ValueError, SyntaxError) as e:
            raise UsageError(str(e)) from None
    if opt.target_flops is not None and not 0 < opt.target_flops < 1:
        raise UsageError(f"--target-flops must be in (0, 1), got {opt.target_flops}")
    if opt.ratio is not None and not 0 < opt.ratio < 1:
        raise UsageError(f"--ratio must be in (0, 1), got {opt.ratio}")
    if opt.divisor < 1 or opt.min_channels < 1:
        raise UsageError("--divisor and --min-channels must be >= 1")
    if opt.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {opt.epochs}")


def run_one_shot(opt) -> dict:
    check_args(opt)
    device = select_device(opt.device)
    torch.manual_seed(opt.seed)
    from_yaml = Path(str(opt.weights)).suffix in (".yaml", ".yml")
    model = None if from_yaml else load_model(opt.weights, trust=opt.trust_checkpoint)
    needs_train = opt.method in ("taylor", "pagcp") or opt.bias_compensation
    data = check_dataset(opt.data, splits=("train", "val") if needs_train else ("val",))
    if model is None:
        model = load_model(opt.weights, nc=data["nc"])
    if model.nc != data["nc"]:
        raise UsageError(f"{opt.weights} predicts {model.nc} classes but {data['yaml_file']} has {data['nc']}")
    model.to(device).eval()
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    stride = int(max(model.stride.max(), 32))
    evaluate = Evaluator(data, opt.imgsz, opt.batch_size, device, opt.workers, stride)

    t0 = time.time()
    groups = build_groups(model, imgsz=opt.imgsz, ignore=opt.ignore)
    (save_dir / "groups.txt").write_text(groups.dump())
    LOGGER.info(f"{len(groups.prunable)} prunable groups of {len(groups.groups)} ({time.time() - t0:.1f}s)")
    if opt.show_groups:
        LOGGER.info(groups.dump())
    if not groups.prunable:
        raise UsageError("no prunable channel groups in this model (see groups.txt for the reasons)")

    base = _measure(model, evaluate, opt.imgsz, "before")
    if opt.method == "taylor":
        _accumulate_gradients(model, data, opt, device)
    removed = _plan_pagcp(model, groups, opt, data, device, save_dir) if opt.method == "pagcp" else _plan(model, groups, opt)
    frac = estimate_flops(groups, removed)[1] / estimate_flops(groups, {})[0]
    model.zero_grad(set_to_none=True)
    if opt.bias_compensation:
        from engine.oracle import calibration_batches
        from prune.surgery import compensate_biases, input_means

        batches = calibration_batches(data, opt.imgsz, opt.calib_images, min(opt.batch_size, 16), opt.seed, stride)
        images = (b["img"].to(device).float() / 255 for b in batches)
        compensate_biases(model, groups, removed, input_means(model, groups, removed, images))
    apply_removal(model, groups, removed)
    prune_seconds = time.time() - t0
    LOGGER.info(f"pruned {sum(map(len, removed.values()))} channels in {len(removed)} groups: "
                f"conv FLOPs x{frac:.3f} ({prune_seconds:.1f}s)")

    ckpt = {
        "model": copy.deepcopy(model).half(),
        "epoch": -1,
        "date": datetime.datetime.now().isoformat(),
        "pruning": {"method": opt.method, "global": opt.global_ranking, "removed": removed, "source": str(opt.weights)},
        "channels": channel_table(model),
    }
    save_checkpoint(ckpt, save_dir / "pruned.pt")
    write_json(channel_table(model), save_dir / "channels.json")
    after = _measure(model, evaluate, opt.imgsz, "after")
    summary = {
        "method": opt.method,
        "family": model_family(model),
        "weights": str(opt.weights),
        "data": data["yaml_file"],
        "imgsz": opt.imgsz,
        "target_flops": opt.target_flops,
        "ratio": opt.ratio,
        "global": opt.global_ranking,
        "before": base,
        "after": after,
        "flops_ratio": after["gflops"] / base["gflops"] if base["gflops"] else None,
        "params_ratio": after["params"] / base["params"],
        "seconds": prune_seconds,
        "image_forwards": getattr(opt, "image_forwards", None),
        "groups": group_sizes(groups, removed),
    }
    write_json(summary, save_dir / "summary.json")
    LOGGER.info(_table(base, after))
    LOGGER.info(f"Results saved to {save_dir}: pruned.pt, channels.json, summary.json")
    summary["save_dir"] = str(save_dir)
    return summary


def _plan_pagcp(model: nn.Module, groups, opt, data: dict, device, save_dir: Path) -> dict[int, list[int]]:
    """PAGCP: greedy sequential pruning of the engine's groups under the per-task loss oracle, evaluated on a
    seeded calibration subset of training images with masks (see prune/pagcp.py for departures)."""
    from engine.loss import build_criterion
    from engine.oracle import CalibrationOracle, calibration_batches
    from prune.pagcp import PAGCP, PAGCPConfig

    rate = opt.initial_rate + opt.round * opt.rate_slope
    thres = opt.initial_thres + opt.round * opt.thres_slope
    cfg = PAGCPConfig(initial_rate=rate, initial_thres=thres, exp=opt.exp, topk=opt.topk, step=opt.ratio_step,
                      criterion=opt.prunemethod.lower(), divisor=opt.divisor, min_keep=opt.min_channels)
    units = groups.prunable
    if opt.compression == "backbone":
        n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model)
        units = [g for g in units if all(int(p.split(".")[1]) < n_backbone for p in g.producers if p.startswith("model."))]
    stride = int(max(model.stride.max(), 32))
    batches = calibration_batches(data, opt.imgsz, opt.calib_images, min(opt.batch_size, 16), opt.seed, stride)
    criterion = build_criterion(model, None, opt.imgsz)
    oracle = CalibrationOracle(model, batches, criterion, list(criterion.names), device)
    t = time.time()
    policy = PAGCP(model, groups, oracle, list(criterion.names), cfg, units=units)
    removed, decisions = policy.run()
    rows = [d.row(list(criterion.names)) for d in decisions]
    (save_dir / "units.txt").write_text(
        f"PAGCP rate {rate} thres {thres} exp {opt.exp} lambda {policy.lam:.5f} topk {opt.topk}\n"
        f"oracle calls {oracle.calls}, image-forwards {oracle.image_forwards}, {time.time() - t:.1f}s\n"
        "unit  ch -> kept  ratio  threshold  tripped-by  accepted loss/base  producers\n" + "\n".join(rows) + "\n")
    write_json([vars(d) for d in decisions], save_dir / "units.json")
    LOGGER.info(f"PAGCP: {len(removed)} of {len(units)} units pruned, {oracle.calls} oracle calls, "
                f"{oracle.image_forwards} image-forwards ({time.time() - t:.1f}s); decisions in units.txt")
    opt.image_forwards = oracle.image_forwards
    return removed


def _plan(model: nn.Module, groups, opt) -> dict[int, list[int]]:
    """Which channels go: criterion scores + a budget (FLOPs target, ratio, per-layer rates or BN threshold)."""
    kw = dict(divisor=opt.divisor, min_keep=opt.min_channels)
    if opt.method == "slim":
        from prune import slim

        scores = slim.gamma_scores(model, groups)
        if opt.slim_threshold is not None or opt.slim_percent is not None:
            t = opt.slim_threshold if opt.slim_threshold is not None else slim.percentile_threshold(scores, opt.slim_percent)
            LOGGER.info(f"slimming threshold |gamma| < {t:.4g}")
            return slim.plan_threshold(groups, scores, t, **kw)
        if opt.target_flops is not None:
            return slim.threshold_for_flops(groups, scores, opt.target_flops, **kw)[1]
    else:
        crit = get_criterion(opt.method)
        scores = {g.id: crit(model, g, seed=opt.seed) for g in groups.prunable}
    if opt.pruning_params is not None:
        from prune.sensitivity import layer_plan

        return layer_plan(groups, scores, opt.pruning_params, **kw)
    planner = plan_global if opt.global_ranking else plan_uniform
    if opt.target_flops is not None:
        return solve_ratio_for_flops(groups, planner, opt.target_flops, scores=scores, **kw)[0]
    return planner(groups, scores=scores, ratio=opt.ratio, **kw)


def _measure(model: nn.Module, evaluate: Evaluator, imgsz: int, tag: str) -> dict:
    res = evaluate(model)
    LOGGER.info(f"{tag}:\n{format_table(res)}")
    return {
        "params": count_params(model),
        "gflops": gflops(model, imgsz),
        "map50": res.map50,
        "map50_95": res.map50_95,
        "precision": res.precision,
        "recall": res.recall,
    }


def _accumulate_gradients(model, data, opt, device) -> None:
    """Gradients of the detection loss over --calib-images training images (for the taylor criterion)."""
    try:
        from engine.loss import build_criterion
    except ImportError as e:
        raise UsageError("--method taylor needs the training loss (engine/loss.py), not available") from e
    loader = build_val_loader(data, "train", opt.imgsz, min(opt.batch_size, 16), 32, opt.workers)
    criterion = build_criterion(model, None, opt.imgsz)
    model.train()
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in loader:
        img = batch["img"].to(device).float() / 255
        loss, _ = criterion(model(img), batch)
        loss.backward()
        seen += img.shape[0]
        if seen >= opt.calib_images:
            break
    model.eval()


def _table(before: dict, after: dict) -> str:
    row = "%-8s%12s%10s%10s%11s"
    lines = [row % ("", "params", "GFLOPs", "mAP50", "mAP50-95")]
    for tag, d in (("before", before), ("after", after)):
        lines.append(row % (tag, f"{d['params']:,}", f"{d['gflops']:.2f}", f"{d['map50']:.3f}", f"{d['map50_95']:.3f}"))
    return "\n".join(lines)
