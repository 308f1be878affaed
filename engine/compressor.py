# AGPL-3.0 License
"""One-shot compression run: load -> validate -> build groups -> score -> plan -> cut -> save -> validate.

The run folder (runs/compress/exp*) receives pruned.pt (a normal checkpoint carrying the pruned
structure), channels.json (remaining channels per layer), groups.txt and summary.json
(params, gflops, map50, map50_95 before and after).

Under torchrun (or `compress.py --device 0,1,...`) every process runs this module: pruning is decided identically
on all of them (PAGCP's oracle and Group Fisher share their work through utils/distributed.py), fine-tuning is
DDP, and only rank 0 validates and writes the run folder.
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils import distributed as ddp
from data.datasets import build_val_loader, check_dataset
from engine.report import (
    FLOPS_TOLERANCE,
    console_table,
    final_line,
    report_markdown,
    round_seconds,
    rounding_warning,
    write_results,
)
from engine.validation import ValResult, format_table, validate, write_json
from models.loader import fuse_model, load_model, model_family
from prune import build_groups
from prune.importance import get_criterion
from prune.surgery import apply_removal, channel_table, estimate_flops, group_sizes
from prune.plans import plan_global, plan_uniform, solve_ratio_for_flops
from utils.checkpoint import save_checkpoint
from utils.files import copy_file, write_text
from utils.flops import count_params, gflops
from utils.general import LOGGER, UsageError, increment_path
from utils.plots import plot_channels, plot_loss_curves, plot_rounds

ONE_SHOT_METHODS = ("pagcp", "fisher", "l1", "l2", "l1_largest", "l2_largest", "bn", "bnl1", "random", "taylor", "slim")


class Evaluator:
    """Validation on a fixed loader (built once, reused for before/after)."""

    def __init__(self, data: dict, imgsz: int, batch_size: int, device, workers: int, stride: int = 32):
        self.data, self.device = data, device
        self.loader = build_val_loader(data, "val", imgsz, batch_size, stride, workers)

    def __call__(self, model: nn.Module, progress: bool = True) -> ValResult:
        m = fuse_model(copy.deepcopy(model).to(self.device))
        res, _ = validate(m, self.loader, self.data["names"], device=self.device, progress=progress,
                          single_cls=bool(self.data.get("single_cls")))
        return res


def check_args(opt) -> None:
    from engine.safeguards import resolve_budget
    from utils.config import defaults

    if opt.method not in ONE_SHOT_METHODS:
        raise UsageError(f"unknown --method '{opt.method}': choose from {', '.join(ONE_SHOT_METHODS)}")
    if opt.target_flops is not None and not 0 < opt.target_flops < 1:
        raise UsageError(f"--target-flops must be in (0, 1), got {opt.target_flops}")
    resolve_budget(opt, defaults("compress"))  # PAGCP's default target, absurd targets
    if opt.method == "pagcp":
        if opt.pruning_params is not None:
            raise UsageError("--pruning-params prunes by a criterion: add --criterion 0-6 (or --method l2, ...)")
        if opt.initial_thres <= 1:
            raise UsageError(f"--initial_thres must be > 1 (a cap on cumulative loss growth), got {opt.initial_thres}")
        if not 0 < opt.initial_rate < (1 if opt.threshold_schedule == "reference" else float("inf")):
            span = "(0, 1)" if opt.threshold_schedule == "reference" else "> 0"
            raise UsageError(f"--initial_rate must be {'in ' if '(' in span else ''}{span}, got {opt.initial_rate}")
        if not 0 < opt.topk <= 1:
            raise UsageError(f"--topk must be in (0, 1], got {opt.topk}")
        _check_common(opt)
        return
    if opt.method == "fisher" and (opt.target_flops is None or opt.ratio is not None or opt.pruning_params):
        raise UsageError("--method fisher prunes during training to a FLOPs target: give --target-flops F only")
    if opt.method == "fisher" and opt.divisor > 1:
        raise UsageError("--method fisher masks one channel at a time and does not round to --divisor: leave "
                         "--divisor at 1 (or prune with --method l1/pagcp, which round to it)")
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
    if opt.ratio is not None and not 0 < opt.ratio < 1:
        empty = " (1 would empty every layer)" if opt.ratio == 1 else ""
        raise UsageError(f"--ratio must be in (0, 1), got {opt.ratio}{empty}")
    if opt.divisor < 1 or opt.min_channels < 1:
        raise UsageError("--divisor and --min-channels must be >= 1")
    _check_common(opt)


def _check_common(opt) -> None:
    if opt.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {opt.epochs}")
    if opt.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {opt.rounds}")
    if opt.distill and opt.epochs == 0:
        raise UsageError("--distill needs fine-tuning: give --epochs N > 0")


def run(opt) -> dict:
    """compress.py: `--rounds` x (prune -> fine-tune `--epochs` -> validate), each round starting from the
    previous round's result; `--resume` continues an interrupted run at its last unfinished stage, with the
    options the run was started with."""
    t_run = time.time()
    save_dir, summary = _find_run(opt) if opt.resume else (None, None)
    given = {k: v for k, v in vars(opt).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    check_args(opt)
    device = ddp.setup(opt.device)
    ddp.check_batch(opt.batch_size, ddp.world_size())
    torch.manual_seed(opt.seed)
    np.random.seed(opt.seed)
    needs_train = opt.method in ("taylor", "pagcp", "fisher") or opt.bias_compensation or opt.epochs > 0 \
        or opt.bn_recalib > 0
    with ddp.zero_first():  # the built-in data is generated once
        data = check_dataset(opt.data, splits=("train", "val") if needs_train else ("val",))
    if opt.single_cls:  # every loader (validation, calibration, BN re-estimation) then reads class 0 only
        data = {**data, "single_cls": True}
    if opt.weights is None:
        opt.weights = str(ensure_base_model(opt, data))
    from_yaml = Path(str(opt.weights)).suffix in (".yaml", ".yml")
    model = load_model(opt.weights, nc=data["nc"] if from_yaml else None, trust=opt.trust_checkpoint)
    if model.nc != data["nc"] and not opt.single_cls:
        raise UsageError(f"{opt.weights} predicts {model.nc} classes but {data['yaml_file']} has {data['nc']}: "
                         "pass the matching --data (or --single-cls)")
    if summary is None and (opt.ignore or opt.target_flops is not None):
        _check_reachable(model, opt)  # a bad --ignore pattern or an unreachable target: before any folder
    if save_dir is None:  # the inputs are usable: only now is a run folder created (by rank 0, for all)
        if ddp.is_main():
            save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
            write_json(given, save_dir / "opt.json")  # what --resume restores
        save_dir = ddp.broadcast(save_dir)
    model.to(device).eval()
    stride = int(max(model.stride.max(), 32))
    evaluate = Evaluator(data, opt.imgsz, opt.batch_size, device, opt.workers, stride) if ddp.is_main() else None
    base_channels = channel_table(model)
    if summary is None:
        summary = {"method": opt.method, "family": model_family(model), "weights": str(opt.weights),
                   "data": data["yaml_file"], "imgsz": opt.imgsz, "rounds_planned": opt.rounds, "epochs": opt.epochs,
                   "base": _measure(model, evaluate, opt.imgsz, "base"), "rounds": []}
        if ddp.is_main():
            write_json(summary, save_dir / "summary.json")
    summary = ddp.broadcast(summary)  # rank 0's measurements
    teacher = copy.deepcopy(model).eval() if opt.distill else None

    for k in range(opt.rounds):
        rdir = save_dir / f"round_{k}"
        if k < len(summary["rounds"]):  # finished before an interruption
            model = load_model(rdir / summary["rounds"][k]["model"]).to(device)
            continue
        # this round's FLOPs target, of its input: what is left of --target-flops over the rounds left, so that
        # rounds landing off their own target (within the band, or by --divisor rounding) do not compound
        done = float(np.prod([r.get("flops_share", 1.0) for r in summary["rounds"]]))
        opt.round_target = round_target(opt.target_flops, opt.rounds - k, done)
        model, entry = _round(k, model, data, opt, device, evaluate, rdir, teacher)
        ddp.barrier()  # rank 0 has saved the round's model
        # the next round starts from the saved file, as it does after --resume: same structure either way
        model = load_model(rdir / entry["model"]).to(device)
        summary["rounds"].append(entry)
        if ddp.is_main():
            write_json(summary, save_dir / "summary.json")
            write_results(summary, save_dir / "results.csv")
            plot_rounds(summary, save_dir / "rounds.png")
    if not ddp.is_main():  # the summary, report and final files are rank 0's
        return summary

    final = summary["rounds"][-1]
    summary["before"], summary["after"] = summary["base"], {k: final[k] for k in ("params", "gflops", "map50",
                                                                                  "map50_95", "precision", "recall")}
    summary["flops_ratio"] = final["gflops"] / summary["base"]["gflops"] if summary["base"]["gflops"] else None
    from engine.safeguards import run_warnings
    from utils.config import defaults

    summary["warnings"] = run_warnings(summary, opt, defaults("compress"))
    summary["params_ratio"] = final["params"] / summary["base"]["params"]
    for key in ("image_forwards", "forward_equivalents"):
        summary[key] = sum(r.get(key) or 0 for r in summary["rounds"]) or None
    summary.update(round_seconds(summary["rounds"]))
    summary["divisor"], summary["target_flops"] = opt.divisor, opt.target_flops
    summary["flops_share"] = float(np.prod([r.get("flops_share", np.nan) for r in summary["rounds"]]))
    summary["groups"] = final.get("groups")  # per group channels before/after, last round
    if opt.latency:
        from engine.latency import compress_latency

        base_model = load_model(opt.weights, nc=data["nc"] if from_yaml else None, trust=opt.trust_checkpoint)
        summary["latency"] = compress_latency(base_model, model, opt.imgsz, summary["flops_ratio"])
    final_file = save_dir / f"round_{len(summary['rounds']) - 1}" / final["model"]
    copy_file(final_file, save_dir / "pruned.pt")
    write_json(channel_table(model), save_dir / "channels.json")
    plot_channels(base_channels, channel_table(model), save_dir / "channels.png")
    summary["run_seconds"] = time.time() - t_run  # this process (a resumed run: since the resume)
    summary["base_trained"] = bool(getattr(opt, "base_trained", False))  # the demo's base model, in run_seconds
    write_json(summary, save_dir / "summary.json")
    write_text(save_dir / "report.md", report_markdown(summary, opt))
    LOGGER.info(console_table(summary))
    LOGGER.info(final_line(summary))
    for w in summary["warnings"]:
        LOGGER.warning(w)
    LOGGER.info(f"Results saved to {save_dir}: pruned.pt (final model), summary.json, results.csv, report.md, "
                f"round_*/")
    summary["save_dir"] = str(save_dir)
    return summary


run_one_shot = run  # the name earlier code used


def _check_reachable(model: nn.Module, opt) -> None:
    """Refuse --ignore patterns that match no prunable layer and a --target-flops that no plan can reach,
    before anything is written."""
    from prune.plans import min_flops_share

    groups = build_groups(model, imgsz=opt.imgsz, ignore=opt.ignore)  # raises on a pattern that matches nothing
    if opt.target_flops is None:
        return
    if opt.method == "pagcp":  # per round, the grid's largest ratio in every unit
        from prune.methods.pagcp.budget import least_share

        least = least_share(groups, opt.ratio_step, opt.divisor, opt.min_channels) ** max(opt.rounds, 1)
        if least > opt.target_flops + opt.flops_tol:
            raise UsageError(f"--target-flops {opt.target_flops} cannot be reached by PAGCP: its largest ratio in every "
                             f"group (--ratio-step grid, --divisor {opt.divisor}, --min-channels {opt.min_channels}) "
                             f"leaves {least:.3f} of the base FLOPs")
        return
    least = min_flops_share(groups, opt.divisor, opt.min_channels)
    if least > opt.target_flops:
        raise UsageError(f"--target-flops {opt.target_flops} cannot be reached: keeping --min-channels "
                         f"{opt.min_channels} (--divisor {opt.divisor}) per group leaves at least {least:.3f} of the "
                         "base FLOPs; ask for more or lower --min-channels")


# options that may differ on the machine that resumes; every other one is the run's own
RESUME_KEEPS = ("resume", "device", "workers", "project", "name", "exist_ok")


def round_target(target_flops: float | None, rounds_left: int, done: float = 1.0) -> float | None:
    """FLOPs share of its input a round aims at: (target_flops / done) ** (1 / rounds_left), where done is the
    share the finished rounds reached (of the base model's FLOPs); None without a target. With equal rounds
    that land on their targets this is target_flops ** (1 / rounds) each."""
    if target_flops is None:
        return None
    return min(1.0, (target_flops / done) ** (1 / max(rounds_left, 1)))


def _find_run(opt) -> tuple[Path, dict | None]:
    """--resume [folder]: the given or latest run folder and its summary so far; the run's saved options
    (opt.json) replace the command line's, so a plain `--resume` continues the same compression."""
    if opt.resume is True or str(opt.resume) == "True":
        runs = sorted((f for f in Path(opt.project).glob("*/*.json") if f.name in ("opt.json", "summary.json")),
                      key=lambda f: f.stat().st_mtime)
        if not runs:
            raise UsageError(f"--resume: no compression run under {opt.project}; pass --resume runs/compress/expN")
        save_dir = runs[-1].parent
    else:
        save_dir = Path(opt.resume)
        if not (save_dir / "opt.json").exists() and not (save_dir / "summary.json").exists():
            raise UsageError(f"--resume {save_dir}: not a compression run folder (no opt.json or summary.json)")
    if (save_dir / "opt.json").exists():  # runs started before opt.json existed keep the command line's options
        for k, v in json.loads((save_dir / "opt.json").read_text()).items():
            if k not in RESUME_KEEPS and hasattr(opt, k):
                setattr(opt, k, v)
    summary = json.loads((save_dir / "summary.json").read_text()) if (save_dir / "summary.json").exists() else None
    saved = " with its saved options (opt.json; only --device and --workers may change)" \
        if (save_dir / "opt.json").exists() else ""
    LOGGER.info(f"resuming {save_dir}{saved}: {len(summary['rounds']) if summary else 0} of {opt.rounds} rounds done")
    return save_dir, summary


def _round(k: int, model: nn.Module, data: dict, opt, device, evaluate: Evaluator, rdir: Path,
           teacher: nn.Module | None) -> tuple[nn.Module, dict]:
    """One round: prune (or reuse this round's pruned.pt after an interruption), fine-tune, validate."""
    t0 = time.time()
    if ddp.is_main():
        rdir.mkdir(parents=True, exist_ok=True)
    stage = rdir / "pruned.json"
    reused = opt.resume and stage.exists() and (rdir / "pruned.pt").exists()  # never another run's (--exist-ok)
    if reused:
        pruned = json.loads(stage.read_text())
        model = load_model(rdir / "pruned.pt").to(device)
        LOGGER.info(f"round {k}: reusing {rdir / 'pruned.pt'}")
    else:
        pruned = _prune(k, model, data, opt, device, evaluate, rdir)
    entry = {"round": k, **pruned, "finetune_seconds": 0.0}
    ddp.check_same(channel_table(model), f"round {k}: the pruned structure (channel table)")
    if opt.epochs > 0:
        t1 = time.time()
        from engine.trainer import train

        last = rdir / "weights" / "last.pt"
        resume = bool(opt.resume) and last.exists() and _has_train_state(last)
        done = bool(opt.resume) and (rdir / "weights" / "best.pt").exists() and not resume
        if done:
            model = load_model(rdir / "weights" / "best.pt").to(device)
        else:
            kw = {} if resume else dict(_train_kwargs(opt), save_dir=str(rdir))
            res = train(model=None if resume else model, resume=str(last) if resume else False,
                        teacher_model=teacher, **kw)
            model = (res.model if res.model is not None else model).to(device)  # only rank 0 has the EMA's best
        entry["finetune_seconds"] = time.time() - t1  # training with its per-epoch validation (this process)
        after = _measure(model, evaluate, opt.imgsz, f"round {k} after fine-tuning")
        entry.update(after, model="weights/best.pt")
    else:
        entry.update({k2: pruned["pruned_metrics"][k2] for k2 in ("params", "gflops", "map50", "map50_95",
                                                                  "precision", "recall")}, model="pruned.pt")
    entry["map50_95_before_finetune"] = pruned["pruned_metrics"]["map50_95"]
    # the whole round: pruning (with the oracle), validations, saving and fine-tuning, each counted once
    entry["seconds"] = time.time() - t0 + (pruned["prune_seconds"] if reused else 0.0)
    return model, entry


def _prune(k: int, model: nn.Module, data: dict, opt, device, evaluate: Evaluator, rdir: Path) -> dict:
    t0 = time.time()
    groups = build_groups(model, imgsz=opt.imgsz, ignore=opt.ignore)
    if ddp.is_main():
        write_text(rdir / "groups.txt", groups.dump())
    LOGGER.info(f"round {k}: {len(groups.prunable)} prunable groups of {len(groups.groups)} ({time.time() - t0:.1f}s)")
    if groups.ignored:
        LOGGER.info(groups.ignored_text())
    if opt.show_groups:
        LOGGER.info(groups.dump())
    if not groups.prunable:
        raise UsageError("no prunable channel groups in this model (see groups.txt for the reasons)")
    stride = int(max(model.stride.max(), 32))
    if opt.method == "taylor":
        _accumulate_gradients(model, data, opt, device)
    opt.image_forwards = opt.forward_equivalents = opt.oracle_seconds = opt.pagcp_info = None
    if opt.method == "pagcp":
        removed = _plan_pagcp(model, groups, opt, data, device, rdir, round_index=opt.round + k)
    elif opt.method == "fisher":
        removed = _plan_fisher(model, groups, opt, rdir)
    else:
        removed = _plan(model, groups, opt)
    removed = ddp.agree(removed, "pruning plan")  # identical on every process by construction; rank 0's wins
    frac = estimate_flops(groups, removed)[1] / estimate_flops(groups, {})[0]
    model.zero_grad(set_to_none=True)
    if opt.bias_compensation:
        from prune.methods.pagcp.oracle import calibration_batches
        from prune.surgery import compensate_biases, input_means

        batches = calibration_batches(data, opt.imgsz, opt.calib_images, min(opt.batch_size, 16), opt.seed, stride)
        images = (b["img"].to(device).float() / 255 for b in batches)
        compensate_biases(model, groups, removed, input_means(model, groups, removed, images))
    apply_removal(model, groups, removed)
    if opt.bn_recalib > 0 and removed:
        from models.loss import build_criterion
        from prune.methods.pagcp.oracle import calibration_batches, recalibrate_bn_if_better

        bs = min(opt.batch_size, 16)
        recal = calibration_batches(data, opt.imgsz, opt.bn_recalib, bs, opt.seed + 1, stride)
        check = calibration_batches(data, opt.imgsz, min(opt.calib_images, opt.bn_recalib), bs, opt.seed + 2, stride)
        kept, before, after = recalibrate_bn_if_better(model, recal, check, build_criterion(model, None, opt.imgsz),
                                                       device)
        LOGGER.info(f"BN statistics re-estimated on {opt.bn_recalib} images: calibration loss {before:.4f} -> "
                    f"{after:.4f}, {'kept' if kept else 'discarded (the original statistics are better)'}")
    prune_seconds = time.time() - t0
    target = opt.round_target
    LOGGER.info(f"round {k}: pruned {sum(map(len, removed.values()))} channels in {len(removed)} groups: "
                f"conv FLOPs x{frac:.3f} ({prune_seconds:.1f}s)")
    if target is not None and abs(frac - target) > FLOPS_TOLERANCE:
        LOGGER.warning(rounding_warning(k, frac, target, opt.divisor))
    from engine.train_state import storable as _storable

    if ddp.is_main():
        ckpt = {
            "model": _storable(model).half(),  # ultralytics' loss args as a dict: loadable by the allowlisted loader
            "epoch": -1,
            "date": datetime.datetime.now().isoformat(),
            "pruning": {"method": opt.method, "round": k, "global": opt.global_ranking, "removed": removed,
                        "source": str(opt.weights)},
            "channels": channel_table(model),
        }
        save_checkpoint(ckpt, rdir / "pruned.pt")
        write_json(channel_table(model), rdir / "channels.json")
    info = {"pruned_metrics": _measure(model, evaluate, opt.imgsz, f"round {k} pruned"),
            "flops_share": frac, "target_share": target, "divisor": opt.divisor,
            "prune_seconds": prune_seconds, "oracle_seconds": opt.oracle_seconds, "image_forwards": opt.image_forwards,
            "forward_equivalents": opt.forward_equivalents, "pagcp": opt.pagcp_info,
            "groups_pruned": len(removed), "channels_removed": int(sum(map(len, removed.values()))),
            "groups": group_sizes(groups, removed)}
    if ddp.is_main():
        write_json(info, rdir / "pruned.json")  # marks the pruning stage done (for --resume)
    return info


def _has_train_state(path: Path) -> bool:
    from utils.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path).get("optimizer") is not None
    except Exception:  # an unreadable last.pt: fine-tune again from pruned.pt
        return False


def _train_kwargs(opt) -> dict:
    """compress.py's fine-tuning options, in train.py's names."""
    from engine.trainer import train_options

    keys = set(vars(train_options())) - {"weights", "cfg", "resume", "save_dir", "name", "project", "exist_ok",
                                         "teacher"}
    kw = {k: getattr(opt, k) for k in keys if hasattr(opt, k)}
    kw["teacher"] = opt.teacher
    return kw


def ensure_base_model(opt, data: dict) -> Path:
    """No --weights: a small base model trained from scratch on --data, cached for reuse (the README's demo)."""
    from data.shapes import shapes_root
    from engine.trainer import train

    tag = f"{Path(data['yaml_file']).parent.name}-{opt.base_cfg.replace('.yaml', '')}-{opt.imgsz}-{opt.base_epochs}"
    path = shapes_root() / "base" / f"{tag}.pt"
    if ddp.broadcast(path.exists()):
        LOGGER.info(f"base model: {path} (cached)")
        return path
    LOGGER.info(f"no --weights: training a base {opt.base_cfg} on {data['yaml_file']} for {opt.base_epochs} epochs "
                f"(cached at {path} for later runs)")
    res = train(cfg=opt.base_cfg, data=opt.data, epochs=opt.base_epochs, imgsz=opt.imgsz, batch_size=opt.batch_size,
                device=opt.device, workers=opt.workers, hyp=opt.base_hyp, optimizer=opt.base_optimizer,
                seed=opt.seed, save_dir=str(path.parent / f".{tag}-run"), exist_ok=True)
    if ddp.is_main():
        copy_file(res.best, path)
    ddp.barrier()
    opt.base_trained = True
    return path


def _plan_pagcp(model: nn.Module, groups, opt, data: dict, device, save_dir: Path,
                round_index: int = 0) -> dict[int, list[int]]:
    """PAGCP: greedy sequential pruning of the engine's groups under the per-task loss oracle, evaluated on a
    seeded calibration subset of training images with masks (see prune/methods/pagcp/reference.py for departures)."""
    from models.loss import build_criterion
    from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches
    from prune.methods.pagcp.reference import PAGCP, PAGCPConfig, loss_ratios

    rate = opt.initial_rate + round_index * opt.rate_slope
    thres = opt.initial_thres + round_index * opt.thres_slope
    cfg = PAGCPConfig(initial_rate=rate, initial_thres=thres, exp=opt.exp, topk=opt.topk, step=opt.ratio_step,
                      criterion=opt.prunemethod.lower(), divisor=opt.divisor, min_keep=opt.min_channels,
                      search=opt.ratio_search, schedule=opt.threshold_schedule, trip=opt.trip)
    units = groups.prunable
    if opt.compression == "backbone":
        n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model)
        units = [g for g in units if all(int(p.split(".")[1]) < n_backbone for p in g.producers if p.startswith("model."))]
    stride = int(max(model.stride.max(), 32))
    batches = calibration_batches(data, opt.imgsz, opt.calib_images, min(opt.batch_size, 16), opt.seed, stride)
    criterion = build_criterion(model, None, opt.imgsz)
    tasks = list(criterion.names)
    oracles = [CalibrationOracle(model, batches, criterion, tasks, device, bn=opt.oracle_bn,
                                 prefix_cache=opt.prefix_cache, shard=True)]  # DDP: batches split, losses all-reduced
    t = time.time()
    journal = save_dir / "units_progress.json"  # decisions so far: --resume continues after the last finished unit
    if not opt.resume and ddp.is_main():
        journal.unlink(missing_ok=True)  # another run's (--exist-ok)
        journal.with_name("flops_search.json").unlink(missing_ok=True)
    if opt.target_flops is not None:  # the threshold scale is searched (prune/methods/pagcp/budget.py)
        from prune.methods.pagcp.budget import FlopsBudget, first_images, pass_line, prune_to_flops

        def make_oracle(cheap: bool):
            if not cheap:
                return oracles[0]
            oracles.append(CalibrationOracle(model, first_images(batches, opt.search_images), criterion, tasks, device,
                                             bn=opt.oracle_bn, prefix_cache=opt.prefix_cache, shard=True))
            return oracles[-1]

        target = opt.round_target
        budget = FlopsBudget(target, opt.flops_tol, opt.search_images, mode=opt.flops_budget, rounds=opt.pricing_rounds,
                             round_cut=opt.pricing_cut)
        res = prune_to_flops(model, groups, make_oracle, tasks, cfg, budget, units=units, progress=ddp.is_main(),
                             journal=journal if opt.resume or ddp.is_main() else None, write_journal=ddp.is_main(),
                             log=LOGGER.info)
        removed, decisions, policy = res.removed, res.decisions, res.policy
        calls, forwards = res.oracle_calls, res.image_forwards
        head = (f"PAGCP to FLOPs x{target:.3f} +- {opt.flops_tol} ({opt.flops_budget}): reached x{res.share:.3f}\n"
                + "".join(f"  {pass_line(p)}\n" for p in res.passes))
    else:
        policy = PAGCP(model, groups, oracles[0], tasks, cfg, units=units, progress=ddp.is_main(),
                       journal=journal if opt.resume or ddp.is_main() else None, write_journal=ddp.is_main())
        removed, decisions = policy.run()
        calls = policy.oracle_calls  # including the calls made before an interruption
        forwards = calls * oracles[0].images
        head = ""
    opt.oracle_seconds = time.time() - t  # the greedy pass(es): every oracle call and mask change (this process)
    growth = float(max(loss_ratios(policy.final_losses, policy.original_losses)))
    opt.pagcp_info = {"target": opt.target_flops and target, "units": len(units), "loss_growth": growth,
                      "guard_stopped": policy.guard_stopped if cfg.guard and opt.target_flops is None else -1,
                      "passes": res.passes if opt.target_flops is not None else None}
    equivalents = sum(o.flop_forwards for o in oracles)
    rows = [d.row(tasks) for d in decisions]
    opt.image_forwards = forwards
    opt.forward_equivalents = round(equivalents)  # this run's calls only (a resumed pass replayed some)
    if not ddp.is_main():
        return removed
    write_text(save_dir / "units.txt",
               f"PAGCP rate {rate} thres {thres} exp {opt.exp} lambda {policy.lam:.5f} topk {opt.topk}\n{head}"
               f"oracle calls {calls}, image-forwards {forwards} ({equivalents:,.0f} full-model equivalents "
               f"by FLOPs: the prefix cache runs only the layers a unit can change), {opt.oracle_seconds:.1f}s; "
               f"largest task loss x{growth:.3f} of the unpruned model's\n"
               "unit  ch -> kept  ratio  threshold  tripped-by  accepted loss/base  producers\n" + "\n".join(rows) + "\n")
    write_json([vars(d) for d in decisions], save_dir / "units.json")
    plot_loss_curves([vars(d) for d in decisions], tasks, save_dir / "loss_curves.png")
    resumed = f", {policy.resumed_units} units replayed from {journal.name}" if policy.resumed_units else ""
    LOGGER.info(f"PAGCP: {len(removed)} of {len(units)} units pruned, {calls} oracle calls, "
                f"{forwards} image-forwards ({opt.oracle_seconds:.1f}s{resumed}); decisions in units.txt")
    return removed


def _plan_fisher(model: nn.Module, groups, opt, rdir: Path) -> dict[int, list[int]]:
    """Group Fisher (seeds 001/003): train with per-sample channel masks, accumulate the Fisher information
    of every channel class, and mask the globally least important one(s) every --interval steps until the
    FLOPs target is reached. The fine-tuning (--epochs) runs after this phase, on the materialized model."""
    from engine.trainer import train
    from prune.methods.fisher import GroupFisher

    target = opt.round_target
    gf = GroupFisher(model, groups, target_flops=target, norm=opt.fisher_norm, interval=opt.interval,
                     channels_per_step=opt.channels_per_step, min_keep=opt.min_channels,
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
        kw = dict(_train_kwargs(opt), epochs=10_000, noval=True, nosave=True, patience=10_000,
                  save_dir=str(rdir / "fisher"))
        train(model=model, callbacks={"on_train_batch_start": [before], "on_after_backward": [after]}, **kw)
    finally:
        gf.detach()
    removed = gf.removed()
    epochs = gf.steps / phase["nb"] if phase.get("nb") else None  # the phase trains: a comparison's budget counts it
    if ddp.is_main():
        write_json({"steps": gf.steps, "epochs": epochs, "flops_share": gf.flops_share, "history": gf.history},
                   rdir / "fisher.json")
    LOGGER.info(f"Group Fisher: {len(gf.history)} channels masked in {gf.steps} training batches"
                f"{f' ({epochs:.1f} epochs)' if epochs else ''} ({time.time() - t:.0f}s), "
                f"FLOPs share {gf.flops_share:.3f}")
    model.eval()
    return removed


def _plan(model: nn.Module, groups, opt) -> dict[int, list[int]]:
    """Which channels go: criterion scores + a budget (FLOPs target, ratio, per-layer rates or BN threshold)."""
    kw = dict(divisor=opt.divisor, min_keep=opt.min_channels)
    if opt.method == "slim":
        from prune.methods import slim

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
    if opt.target_flops is not None:  # over several rounds, each round takes an equal share of the reduction
        target = opt.round_target
        return solve_ratio_for_flops(groups, planner, target, scores=scores, **kw)[0]
    return planner(groups, scores=scores, ratio=opt.ratio, **kw)


def _measure(model: nn.Module, evaluate: Evaluator | None, imgsz: int, tag: str) -> dict:
    if evaluate is None:  # a DDP process other than rank 0: rank 0 validates
        return {"params": count_params(model), "gflops": None, "map50": None, "map50_95": None, "precision": None,
                "recall": None}
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
        from models.loss import build_criterion
    except ImportError as e:
        raise UsageError("--method taylor needs the training loss (models/loss.py), not available") from e
    with ddp.zero_first():  # the label cache
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
