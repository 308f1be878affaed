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
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from data.datasets import build_val_loader, check_dataset
from data.tasks import for_task
from engine import latency_target
from engine.backends import refuse_exported
from engine.demo import base_model_path, ensure_base_model
from engine.gradual import finetune as finetune_gradually
from engine.gradual import has_train_state
from engine.latency import compress_latency
from engine.report import (
    FLOPS_TOLERANCE,
    console_table,
    final_line,
    head_line,
    report_markdown,
    round_seconds,
    rounding_warning,
    write_results,
)
from engine.safeguards import FLOOR_GROUPS, floor_warning, groups_at_floor, resolve_budget, run_warnings
from engine.train_config import resolve_base_lr0
from engine.train_state import storable
from engine.trainer import train, train_options
from engine.validation import ValResult, format_table, validate, write_json
from models.loader import finalize, fuse_model, load_model, model_family, model_task, reset_classes
from models.loss import build_criterion
from prune import build_groups, gradual
from prune.methods import METHOD_NAMES, PlanContext, get_method
from prune.methods.pagcp import config as pagcp_config
from prune.methods.pagcp.method import check_reachable as pagcp_reachable
from prune.methods.pagcp.oracle import calibration_batches, recalibrate_bn_if_better
from prune.plans import min_flops_share
from prune.sensitivity import parse_pruning_params
from prune.surgery import apply_removal, channel_table, compensate_biases, estimate_flops, group_sizes, input_means
from utils import distributed as ddp
from utils.checkpoint import save_checkpoint
from utils.config import defaults
from utils.files import copy_file, write_text
from utils.flops import count_params, gflops
from utils.general import LOGGER, UsageError, check_imgsz, increment_path
from utils.plots import plot_channels, plot_rounds


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
    """Refuse bad or conflicting flags in one line (UsageError) before anything runs; fills PAGCP's default
    budget (engine/safeguards.py) and parses --pruning-params."""
    if opt.method not in METHOD_NAMES:
        raise UsageError(f"unknown --method '{opt.method}': choose from {', '.join(METHOD_NAMES)}")
    if opt.target_flops is not None and not 0 < opt.target_flops < 1:
        raise UsageError(f"--target-flops must be in (0, 1), got {opt.target_flops}")
    if opt.weights:
        refuse_exported(opt.weights, "compress.py")  # pruning needs the PyTorch model
    latency_target.check_options(opt)  # --target-speedup / --target-latency on --runtime
    resolve_budget(opt, defaults("compress"))  # PAGCP's default target, absurd targets
    if opt.method == "pagcp":
        pagcp_config.check_options(opt)
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
    gradual.check_options(opt)


def run(opt) -> dict:
    """compress.py: `--rounds` x (prune -> fine-tune `--epochs` -> validate), each round starting from the
    previous round's result; `--resume` continues an interrupted run at its last unfinished stage, with the
    options the run was started with. Returns the run's summary (summary.json's content and save_dir)."""
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
    weights, base_trained = opt.weights, False
    if weights is None:  # the offline demo: its base model, trained once and cached
        base_trained = not ddp.broadcast(base_model_path(opt, data).exists())
        weights = str(ensure_base_model(opt, data))
    from_yaml = Path(str(weights)).suffix in (".yaml", ".yml")
    model = load_model(weights, nc=data["nc"] if from_yaml else None, trust=opt.trust_checkpoint)
    if from_yaml:  # a yaml build has placeholder names ('0', '1', ...): the data's are the model's own
        model = finalize(model, data["names"])
    if model.nc != data["nc"] and not opt.single_cls:
        raise UsageError(f"{weights} predicts {model.nc} classes but {data['yaml_file']} has {data['nc']}: "
                         "pass the matching --data (or --single-cls)")
    data = for_task(data, model_task(model))  # every loader then reads the task's labels (masks, ...)
    stride = int(max(model.stride.max(), 32))
    opt.imgsz = check_imgsz(opt.imgsz, stride)  # once, before any graph trace or loader: every stage uses it
    if summary is None and (opt.ignore or opt.target_flops is not None):
        _check_reachable(model, opt)  # a bad --ignore pattern or an unreachable target: before any folder
    goal = latency_target.LatencyGoal.create(opt, model, defaults("compress")) if latency_target.wanted(opt) else None
    if save_dir is None:  # the inputs are usable: only now is a run folder created (by rank 0, for all)
        if ddp.is_main():
            save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
            write_json(given, save_dir / "opt.json")  # what --resume restores
        save_dir = ddp.broadcast(save_dir)
    model.to(device).eval()
    evaluate = Evaluator(data, opt.imgsz, opt.batch_size, device, opt.workers, stride) if ddp.is_main() else None
    base_channels = channel_table(model)
    if summary is None:
        summary = {"method": opt.method, "family": model_family(model), "weights": str(weights),
                   "data": data["yaml_file"], "imgsz": opt.imgsz, "rounds_planned": opt.rounds, "epochs": opt.epochs,
                   "base": _measure(model, evaluate, opt.imgsz, "base"), "rounds": []}
        if ddp.is_main():
            write_json(summary, save_dir / "summary.json")
    summary = ddp.broadcast(summary)  # rank 0's measurements
    # the input model teaches (a --teacher checkpoint replaces it), unless the fine-tune gives it another class head
    teacher = copy.deepcopy(model).eval() if opt.distill and opt.epochs > 0 and not opt.teacher else None
    if teacher is not None and opt.single_cls and int(model.nc) != 1:
        teacher = None
        LOGGER.info(f"distillation off: --single-cls fine-tunes a 1-class head, the input model predicts {model.nc}")
    lr0 = resolve_base_lr0(SimpleNamespace(base_lr0=None, weights=weights, trust_checkpoint=opt.trust_checkpoint))
    run = SimpleNamespace(data=data, device=device, evaluate=evaluate, teacher=teacher, weights=str(weights),
                          base_nc=int(model.nc), goal=goal, base=copy.deepcopy(model) if goal else None, base_lr0=lr0)

    for k in range(opt.rounds + (goal.topups if goal else 0)):  # a latency target: top-up rounds while missed
        if k >= opt.rounds and goal.met():
            break
        rdir = save_dir / f"round_{k}"
        if k < len(summary["rounds"]):  # finished before an interruption
            model = load_model(rdir / summary["rounds"][k]["model"]).to(device)
            continue
        # this round's FLOPs target, of its input: what is left of --target-flops over the rounds left, so that
        # rounds landing off their own target (within the band, or by --divisor rounding) do not compound
        done = float(np.prod([r.get("flops_share", 1.0) for r in summary["rounds"]]))
        target = goal.round_share(opt.rounds - k) if goal else round_target(opt.target_flops, opt.rounds - k, done)
        model, entry = _round(k, model, opt, run, rdir, target)
        ddp.barrier()  # rank 0 has saved the round's model
        # the next round starts from the saved file, as it does after --resume: same structure either way
        model = load_model(rdir / entry["model"]).to(device)
        if goal:
            entry["latency"] = ddp.broadcast(goal.measure(run.base, model, k))
        summary["rounds"].append(entry)
        if ddp.is_main():
            write_json(summary, save_dir / "summary.json")
            write_results(summary, save_dir / "results.csv")
            plot_rounds(summary, save_dir / "rounds.png")
    if not ddp.is_main():  # the summary, report and final files are rank 0's
        return summary
    _finish(summary, model, opt, run, save_dir, base_channels, from_yaml)
    summary["run_seconds"] = time.time() - t_run  # this process (a resumed run: since the resume)
    summary["base_trained"] = base_trained  # the demo's base model, in run_seconds
    write_json(summary, save_dir / "summary.json")
    write_text(save_dir / "report.md", report_markdown(summary, opt) + (goal.markdown() if goal else ""))
    LOGGER.info(console_table(summary))
    LOGGER.info(final_line(summary))
    if summary.get("head_change"):
        LOGGER.info(head_line(summary))
    for w in summary["warnings"]:
        LOGGER.warning(w)
    LOGGER.info(f"Results saved to {save_dir}: pruned.pt (final model), summary.json, results.csv, report.md, "
                f"round_*/")
    if goal:
        LOGGER.info(goal.line())
    summary["save_dir"] = str(save_dir)
    return summary


def _finish(summary: dict, model: nn.Module, opt, run, save_dir: Path, base_channels: dict, from_yaml: bool) -> None:
    """The run's totals into `summary` (before/after, ratios, warnings, costs, latency) and its final files."""
    final = summary["rounds"][-1]
    summary["before"], summary["after"] = summary["base"], {k: final[k] for k in ("params", "gflops", "map50",
                                                                                  "map50_95", "precision", "recall")}
    if int(model.nc) != run.base_nc:  # the head changed (--single-cls fine-tuning): compare like with like
        base = reset_classes(load_model(run.weights, nc=run.data["nc"] if from_yaml else None,
                                        trust=opt.trust_checkpoint), int(model.nc), getattr(model, "names", None))
        summary["before"] = {**summary["base"], "params": count_params(base), "gflops": gflops(base, opt.imgsz)}
        summary["head_change"] = {"base_nc": run.base_nc, "nc": int(model.nc), "single_cls": bool(opt.single_cls),
                                  "base_params": summary["base"]["params"], "base_gflops": summary["base"]["gflops"]}
    before = summary["before"]
    summary["flops_ratio"] = final["gflops"] / before["gflops"] if before["gflops"] else None
    summary["warnings"] = run_warnings(summary, opt, defaults("compress"))
    summary["params_ratio"] = final["params"] / before["params"]
    for key in ("image_forwards", "forward_equivalents"):
        summary[key] = sum(r.get(key) or 0 for r in summary["rounds"]) or None
    summary.update(round_seconds(summary["rounds"]))
    summary["divisor"], summary["target_flops"] = opt.divisor, opt.target_flops
    summary["flops_share"] = float(np.prod([r.get("flops_share", np.nan) for r in summary["rounds"]]))
    summary["groups"] = final.get("groups")  # per group channels before/after, last round
    if run.goal:  # the latency target's own measurement, on its runtime
        summary["latency"] = summary["latency_target"] = run.goal.summary(summary["flops_ratio"])
    elif opt.latency:
        base_model = load_model(run.weights, nc=run.data["nc"] if from_yaml else None, trust=opt.trust_checkpoint)
        summary["latency"] = compress_latency(base_model, model, opt.imgsz, summary["flops_ratio"])
    final_file = save_dir / f"round_{len(summary['rounds']) - 1}" / final["model"]
    copy_file(final_file, save_dir / "pruned.pt")
    write_json(channel_table(model), save_dir / "channels.json")
    plot_channels(base_channels, channel_table(model), save_dir / "channels.png")


run_one_shot = run  # the name earlier code used


def _check_reachable(model: nn.Module, opt) -> None:
    """Refuse --ignore patterns that match no prunable layer and a --target-flops that no plan can reach,
    before anything is written."""
    groups = build_groups(model, imgsz=opt.imgsz, ignore=opt.ignore)  # raises on a pattern that matches nothing
    if opt.target_flops is None:
        return
    if opt.method == "pagcp":
        pagcp_reachable(groups, pagcp_config.PAGCPOptions.from_namespace(opt), opt.rounds)
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
        saved_opt = json.loads((save_dir / "opt.json").read_text())
        gradual.check_resume(vars(opt), saved_opt, set(getattr(opt, "explicit", None) or ()))
        for k, v in saved_opt.items():
            if k not in RESUME_KEEPS and hasattr(opt, k):
                setattr(opt, k, v)
    summary = json.loads((save_dir / "summary.json").read_text()) if (save_dir / "summary.json").exists() else None
    saved = " with its saved options (opt.json; only --device and --workers may change)" \
        if (save_dir / "opt.json").exists() else ""
    LOGGER.info(f"resuming {save_dir}{saved}: {len(summary['rounds']) if summary else 0} of {opt.rounds} rounds done")
    return save_dir, summary


def _round(k: int, model: nn.Module, opt, run, rdir: Path, target: float | None) -> tuple[nn.Module, dict]:
    """One round: prune (or reuse this round's pruned.pt after an interruption), fine-tune, validate.
    run: the run's data, device, evaluate, teacher and weights; target: the round's FLOPs share of its input."""
    t0 = time.time()
    device = run.device
    if ddp.is_main():
        rdir.mkdir(parents=True, exist_ok=True)
    stage = rdir / "pruned.json"  # a one-shot cut's record (also of runs started before gradual pruning)
    if gradual.wanted(opt, run.goal) and target is not None and target < 1 and not (opt.resume and stage.exists()):
        t1 = time.time()
        model, pruned = finetune_gradually(k, model, opt, run, rdir, target, _train_kwargs(opt, run.base_lr0),
                                         lambda m, tag: _measure(m, run.evaluate, opt.imgsz, tag))
        entry = {"round": k, **pruned, "finetune_seconds": time.time() - t1, "model": "weights/best.pt",
                 "map50_95_before_finetune": pruned["pruned_metrics"]["map50_95"]}
        entry.update(_measure(model, run.evaluate, opt.imgsz, f"round {k} after gradual pruning and fine-tuning"))
        entry["seconds"] = time.time() - t0
        return model, entry
    reused = opt.resume and stage.exists() and (rdir / "pruned.pt").exists()  # never another run's (--exist-ok)
    if reused:
        pruned = json.loads(stage.read_text())
        model = load_model(rdir / "pruned.pt").to(device)
        LOGGER.info(f"round {k}: reusing {rdir / 'pruned.pt'}")
    else:
        pruned = _prune(k, model, opt, run, rdir, target)
    entry = {"round": k, **pruned, "finetune_seconds": 0.0}
    ddp.check_same(channel_table(model), f"round {k}: the pruned structure (channel table)")
    if opt.epochs > 0:
        t1 = time.time()
        last = rdir / "weights" / "last.pt"
        resume = bool(opt.resume) and last.exists() and has_train_state(last)
        done = bool(opt.resume) and (rdir / "weights" / "best.pt").exists() and not resume
        if done:
            model = load_model(rdir / "weights" / "best.pt").to(device)
        else:
            kw = {} if resume else dict(_train_kwargs(opt, run.base_lr0), save_dir=str(rdir))
            res = train(model=None if resume else model, resume=str(last) if resume else False,
                        teacher_model=run.teacher, **kw)
            model = (res.model if res.model is not None else model).to(device)  # only rank 0 has the EMA's best
            entry["distill"] = res.distill  # its mode and cost (None without distillation)
        entry["finetune_seconds"] = time.time() - t1  # training with its per-epoch validation (this process)
        after = _measure(model, run.evaluate, opt.imgsz, f"round {k} after fine-tuning")
        entry.update(after, model="weights/best.pt")
    else:
        entry.update({k2: pruned["pruned_metrics"][k2] for k2 in ("params", "gflops", "map50", "map50_95",
                                                                  "precision", "recall")}, model="pruned.pt")
    entry["map50_95_before_finetune"] = pruned["pruned_metrics"]["map50_95"]
    # the whole round: pruning (with the oracle), validations, saving and fine-tuning, each counted once
    entry["seconds"] = time.time() - t0 + (pruned["prune_seconds"] if reused else 0.0)
    return model, entry


def _plan_context(k: int, opt, run, rdir: Path, target: float | None, groups) -> PlanContext:
    def train_phase(model: nn.Module, callbacks: dict, **overrides):  # Group Fisher's masked training phase
        # (its open-ended phase keeps the per-epoch schedule: a step schedule needs the run's length)
        return train(model=model, callbacks=callbacks, **{**_train_kwargs(opt, run.base_lr0), "schedule": "epochs",
                                                          **overrides})

    latency = dict(run.goal.settings(groups), target_flops=target) if run.goal else {}  # a share of predicted ms
    return PlanContext(settings=SimpleNamespace(**{**vars(opt), **latency}), data=run.data, device=run.device, run_dir=rdir,
                       round_index=k, round_target=target, resume=bool(opt.resume), is_main=ddp.is_main(),
                       train=train_phase, log=LOGGER.info)


def _prune(k: int, model: nn.Module, opt, run, rdir: Path, target: float | None) -> dict:
    """The round's pruning stage: groups, the method's plan, the cut (with bias compensation / BN re-estimation
    when asked), pruned.pt; returns the stage's record (pruned.json, which marks the stage done for --resume)."""
    t0 = time.time()
    data, device = run.data, run.device
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
    plan = get_method(opt.method)(model, groups, _plan_context(k, opt, run, rdir, target, groups))
    removed = ddp.agree(plan.removed, "pruning plan")  # identical on every process by construction; rank 0's wins
    frac = estimate_flops(groups, removed)[1] / estimate_flops(groups, {})[0]
    at_floor = groups_at_floor(groups, removed, opt.min_channels)
    if at_floor > FLOOR_GROUPS:
        LOGGER.warning(floor_warning(k, at_floor, len(groups.prunable), opt.min_channels))
    model.zero_grad(set_to_none=True)
    if opt.bias_compensation:
        batches = calibration_batches(data, opt.imgsz, opt.calib_images, min(opt.batch_size, 16), opt.seed, stride)
        images = (b["img"].to(device).float() / 255 for b in batches)
        compensate_biases(model, groups, removed, input_means(model, groups, removed, images))
    apply_removal(model, groups, removed)
    if opt.bn_recalib > 0 and removed:
        bs = min(opt.batch_size, 16)
        recal = calibration_batches(data, opt.imgsz, opt.bn_recalib, bs, opt.seed + 1, stride)
        check = calibration_batches(data, opt.imgsz, min(opt.calib_images, opt.bn_recalib), bs, opt.seed + 2, stride)
        kept, before, after = recalibrate_bn_if_better(model, recal, check, build_criterion(model, None, opt.imgsz),
                                                       device)
        LOGGER.info(f"BN statistics re-estimated on {opt.bn_recalib} images: calibration loss {before:.4f} -> "
                    f"{after:.4f}, {'kept' if kept else 'discarded (the original statistics are better)'}")
    prune_seconds = time.time() - t0
    LOGGER.info(f"round {k}: pruned {sum(map(len, removed.values()))} channels in {len(removed)} groups: "
                f"conv FLOPs x{frac:.3f} ({prune_seconds:.1f}s)")
    if target is not None and abs(frac - target) > FLOPS_TOLERANCE and not run.goal:
        LOGGER.warning(rounding_warning(k, frac, target, opt.divisor))
    if ddp.is_main():
        ckpt = {
            "model": storable(model).half(),  # ultralytics' loss args as a dict: loadable by the allowlisted loader
            "epoch": -1,
            "date": datetime.datetime.now().isoformat(),
            "pruning": {"method": opt.method, "round": k, "global": opt.global_ranking, "removed": removed,
                        "source": run.weights, "base_lr0": run.base_lr0},
            "channels": channel_table(model),
        }
        save_checkpoint(ckpt, rdir / "pruned.pt")
        write_json(channel_table(model), rdir / "channels.json")
    info = {"pruned_metrics": _measure(model, run.evaluate, opt.imgsz, f"round {k} pruned"),
            "flops_share": frac, "target_share": target, "divisor": opt.divisor, "prune_seconds": prune_seconds,
            **{key: plan.info.get(key) for key in ("oracle_seconds", "image_forwards", "forward_equivalents")},
            "pagcp": plan.info.get("pagcp"),
            "groups_pruned": len(removed), "channels_removed": int(sum(map(len, removed.values()))),
            "groups_at_floor": at_floor,
            "groups": group_sizes(groups, removed)}
    if ddp.is_main():
        write_json(info, rdir / "pruned.json")  # marks the pruning stage done (for --resume)
    return info


def _train_kwargs(opt, lr0: float | None = None) -> dict:
    """compress.py's fine-tuning options, in train.py's names; lr0: the base model's training lr0 (step schedule)."""
    keys = set(vars(train_options())) - {"weights", "cfg", "resume", "save_dir", "name", "project", "exist_ok",
                                         "teacher"}
    kw = {k: getattr(opt, k) for k in keys if hasattr(opt, k)}
    kw["teacher"] = opt.teacher
    kw["base_lr0"] = lr0
    return kw


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
        **{f"{t}_{k}": v[k] for t, v in res.tasks.items() for k in ("map50", "map50_95")},  # e.g. mask_map50_95
    }
