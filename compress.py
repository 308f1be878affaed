# AGPL-3.0 License
r"""Compress a YOLO detector by structured channel pruning: rounds of prune -> fine-tune -> validate.

With no arguments, compress.py runs the offline demo: it trains a small YOLOv5n on the built-in shapes data (cached
for later runs), prunes it with PAGCP and fine-tunes it (cfg/default.yaml's demo block; flags you give win).

    python compress.py                                   # offline demo: base model on the built-in data, PAGCP, fine-tune
    python compress.py --weights yolov5n.pt --data coco128.yaml --img 320 --initial_rate 0.02 --epochs 5
    python compress.py --model yolov5m --dataset COCO --data coco.yaml --batch 64 --weights W \
        --initial_rate 0.06 --initial_thres 6. --topk 0.8 --exp --sequential --device 0     # the PAGCP paper's command
    python compress.py --weights yolov5n.pt --data coco128.yaml --target-speedup 1.6 --runtime onnxruntime
    python compress.py --method l1 --target-flops 0.7 --epochs 0 --weights yolov5n.pt --data coco128.yaml
    python compress.py --resume runs/compress/exp3         # continue an interrupted run
    python compress.py --device 0,1,2,3 ...                # one process per GPU (DDP fine-tuning); or:
    torchrun --nproc_per_node 4 compress.py ...
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
import yaml

from data.datasets import DataConfigError
from engine.compressor import check_args, run
from utils.runtimes import RUNTIMES
from prune.importance import SEED_CRITERIA
from prune.methods import METHOD_NAMES
from prune.methods.fisher import FISHER_NORMS
from prune.methods.pagcp.config import BUDGET_MODES, ORACLE_BN, SALIENCIES, SCHEDULES, SEARCHES, TRIPS, UNITS
from train import add_train_args
from utils import distributed as ddp
from utils.checkpoint import CheckpointError
from utils.config import ROOT, HelpFormatter, defaults, explicit_flags
from utils.general import UsageError, interrupt_status, sigterm_as_interrupt


def build_parser(d: dict) -> argparse.ArgumentParser:
    """compress.py's flags, defaults `d` (cfg/default.yaml's train: and compress: sections)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                epilog="Defaults come from cfg/default.yaml (compress: and train: sections); a --cfg "
                                       "recipe overrides them and the command line overrides both.")
    _add_data_args(p, d)
    _add_method_args(p, d)
    _add_pagcp_args(p, d)
    g_fisher = p.add_argument_group("Group Fisher (--method fisher)")
    g_fisher.add_argument("--fisher-norm", default=d["fisher_norm"], choices=FISHER_NORMS,
                          help="--method fisher: importance per FLOP or per activation removed")
    g_fisher.add_argument("--interval", type=int, default=d["interval"], help="--method fisher: steps between prunes")
    g_fisher.add_argument("--channels-per-step", type=int, default=d["channels_per_step"],
                          help="--method fisher: channels masked at each prune")
    g_tune = p.add_argument_group("fine-tuning after each round (train.py's flags)")
    g_tune.add_argument("--epochs", type=int, default=d["epochs"], help="fine-tuning epochs after each pruning round")
    g_tune.add_argument("--no-distill", dest="distill", action="store_false", default=d["distill"],
                        help="fine-tune without the unpruned input model as teacher (the default)")
    g_tune.add_argument("--distill", dest="distill_flag", action="store_true",
                        help="fine-tune with the unpruned input model as teacher (--distill-mode, --dist, --dist-feat "
                             "set how)")
    g_tune.add_argument("--one-shot", action="store_true", default=d["one_shot"],
                        help="prune in one step before fine-tuning (the default)")
    g_tune.add_argument("--gradual", dest="one_shot", action="store_false",
                        help="with --epochs > 0 and a FLOPs target: prune in --gradual-steps cuts inside the fine-tune")
    g_tune.add_argument("--gradual-steps", type=int, default=d["gradual_steps"],
                        help="gradual pruning: number of cuts spread over the fine-tune")
    g_tune.add_argument("--gradual-until", type=float, default=d["gradual_until"],
                        help="gradual pruning: the last cut at this share of the fine-tune's optimizer steps")
    g_tune.add_argument("--gradual-calib-images", type=int, default=d["gradual_calib_images"],
                        help="gradual pruning: calibration images each cut is priced on (PAGCP, taylor)")
    add_train_args(g_tune, d)
    g_base = p.add_argument_group("offline demo: the base model trained when no --weights is given")
    g_base.add_argument("--base-cfg", default=d["base_cfg"], help="no --weights: model yaml of the base model to train")
    g_base.add_argument("--base-epochs", type=int, default=d["base_epochs"], help="no --weights: base training epochs")
    g_base.add_argument("--base-hyp", default=d["base_hyp"], help="no --weights: base training hyperparameters")
    g_base.add_argument("--base-optimizer", default=d["base_optimizer"], help="no --weights: base training optimizer")
    g_base.add_argument("--base-workers", type=int, default=d["base_workers"],
                        help="no --weights: base training dataloader workers (0: the same base on any CPU count)")
    g_out = p.add_argument_group("output")
    g_out.add_argument("--project", default=d["project"], help="save to project/name")
    g_out.add_argument("--name", default=d["name"], help="save to project/name")
    g_out.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    g_out.add_argument("--resume", nargs="?", const=True, default=False, help="continue the latest (or given) run")
    g_out.add_argument("--no-latency", dest="latency", action="store_false", default=d["latency"],
                       help="skip the base vs pruned onnxruntime latency measurement")
    return p


def _add_data_args(p: argparse.ArgumentParser, d: dict) -> None:
    g_data = p.add_argument_group("data and model")
    g_data.add_argument("--weights", type=str, default=None,
                        help="checkpoint (.pt) or model yaml (fresh model); none: the offline demo trains its own base model")
    g_data.add_argument("--data", type=str, default=d["data"], help="dataset yaml or 'shapes' (built-in)")
    g_data.add_argument("--imgsz", "--img", "--img-size", type=int, default=d["imgsz"], help="image size (pixels)")
    g_data.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"], help="batch size")
    g_data.add_argument("--device", default=d["device"],
                        help="cuda device, i.e. 0 or 0,1,2,3 or cpu (default: the first CUDA device, else the CPU)")
    g_data.add_argument("--workers", type=int, default=d["workers"], help="max dataloader workers")
    g_data.add_argument("--single-cls", action="store_true",
                        help="treat the data as single-class (validation, PAGCP's calibration set and fine-tuning)")
    g_data.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    g_data.add_argument("--cfg", default="", help="YAML recipe setting any of these flags (cfg/pagcp/*.yaml); the CLI wins")


def _add_method_args(p: argparse.ArgumentParser, d: dict) -> None:
    g_method = p.add_argument_group("method (every method; criteria with --target-flops / --ratio / --pruning-params)")
    g_method.add_argument("--method", default=d["method"], metavar="{" + ",".join(METHOD_NAMES) + "}",
                          help="pagcp (loss-oracle greedy, PAGCP flags below); fisher (Group Fisher, needs --target-flops); "
                               "a criterion with --target-flops, --ratio or --pruning-params: l1 l2 l1_largest l2_largest bn "
                               "bnl1 random taylor; slim (network slimming: --slim-threshold/--slim-percent)")
    g_method.add_argument("--criterion", default=None, help="alias of --method; seed 002's 0-6 are accepted")
    g_method.add_argument("--target-flops", type=float, default=d["target_flops"],
                          help="keep this share of the base conv FLOPs, e.g. 0.7 (with --divisor: the closest plan)")
    g_method.add_argument("--target-speedup", type=float, default=d["target_speedup"],
                          help="PAGCP: prune until base/pruned latency measured on --runtime reaches this factor (> 1)")
    g_method.add_argument("--target-latency", type=float, default=d["target_latency"],
                          help="PAGCP: prune until the latency measured on --runtime is this many ms per image")
    g_method.add_argument("--runtime", default=d["runtime"], choices=RUNTIMES,
                          help="--target-speedup/--target-latency: the runtime timed (CPU)")
    g_method.add_argument("--runtime-threads", type=int, default=d["runtime_threads"],
                          help="--runtime's intra-op threads as deployed (default: this machine's CPU cores)")
    g_method.add_argument("--runtime-batch", type=int, default=d["runtime_batch"],
                          help="--runtime's batch size as deployed")
    g_method.add_argument("--ratio", type=float, default=d["ratio"], help="share of channels to remove per group")
    g_method.add_argument("--pruning-params", default=None,
                          help="seed 002: a rate for every layer, or \"[(layer, rate), ...]\" (layers: --show-groups)")
    g_method.add_argument("--global", dest="global_ranking", action="store_true", default=d["global_ranking"],
                          help="one ranking across all groups (scores normalized per group)")
    g_method.add_argument("--divisor", type=int, default=d["divisor"],
                          help="round kept channels to a multiple of this: 8 or 16 make pruned models faster on CPU/GPU kernels")
    g_method.add_argument("--min-channels", type=int, default=d["min_channels"], help="minimum channels kept per group")
    g_method.add_argument("--ignore", nargs="*", default=d["ignore"],
                          help="module-name patterns never pruned; a module covers its submodules (model.9 = all of SPPF)")
    g_method.add_argument("--rounds", type=int, default=d["rounds"], help="prune -> fine-tune -> validate rounds")
    g_method.add_argument("--calib-images", type=int, default=d["calib_images"],
                          help="PAGCP's calibration set: training images the loss oracle evaluates every trial on (also the "
                               "images for --method taylor and --bias-compensation)")
    g_method.add_argument("--bias-compensation", action="store_true", default=d["bias_compensation"],
                          help="fold removed channels' mean activation into their consumers (uses --calib-images)")
    g_method.add_argument("--bn-recalib", type=int, default=d["bn_recalib"],
                          help="re-estimate BN statistics on this many training images after each cut (0 = off)")
    g_method.add_argument("--slim-threshold", type=float, default=None, help="--method slim: prune BN |gamma| below this")
    g_method.add_argument("--slim-percent", type=float, default=None, help="--method slim: prune this share of all gammas")
    g_method.add_argument("--seed", type=int, default=d["seed"], help="random seed")
    g_method.add_argument("--show-groups", action="store_true",
                          help="print every channel group (the layer ids of --pruning-params) and why the fixed ones cannot be "
                               "pruned")


def _add_pagcp_args(p: argparse.ArgumentParser, d: dict) -> None:
    g_pagcp = p.add_argument_group("PAGCP (--method pagcp, the default; the reference compress.py's names)")
    g_pagcp.add_argument("--initial_rate", type=float, default=d["initial_rate"],
                         help="PAGCP: the first unit's allowed relative growth of each task loss (0.05 = +5%%)")
    g_pagcp.add_argument("--initial_thres", type=float, default=d["initial_thres"],
                         help="PAGCP: cap on the cumulative loss growth (> 1; with --exp the thresholds' product)")
    g_pagcp.add_argument("--topk", type=float, default=d["topk"], help="PAGCP: keep the best share of pruned units (1 = all)")
    g_pagcp.add_argument("--exp", action="store_true", help="PAGCP: thresholds decay so their product is initial_thres")
    g_pagcp.add_argument("--sequential", action="store_true", help="accepted for the reference's command (always sequential)")
    g_pagcp.add_argument("--compression", default=d["compression"], choices=UNITS, help="PAGCP units")
    g_pagcp.add_argument("--prunemethod", default=d["prunemethod"], choices=SALIENCIES + ("L1", "L2"),
                         help="PAGCP saliency inside a unit: filter L1/L2 norm, or the Fisher information of the "
                              "channel's mask on the calibration images (seeds 001/003's criterion)")
    g_pagcp.add_argument("--ratio-step", type=float, default=d["ratio_step"], help="PAGCP: ratio grid step (0.05 = reference)")
    g_pagcp.add_argument("--ratio-search", default=d["ratio_search"], choices=SEARCHES,
                         help="PAGCP: every ratio up to the first trip (reference), or galloping + bisection (fewer calls)")
    g_pagcp.add_argument("--round", type=int, default=0, help="PAGCP round index (with --rate_slope/--thres_slope)")
    g_pagcp.add_argument("--rate_slope", type=float, default=0.0, help="PAGCP: initial_rate += round * rate_slope")
    g_pagcp.add_argument("--thres_slope", type=float, default=0.0, help="PAGCP: initial_thres += round * thres_slope")
    g_pagcp.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=d["prefix_cache"],
                         help="PAGCP oracle: start forwards at the unit's first layer, reusing earlier layers' outputs")
    g_pagcp.add_argument("--oracle-bn", default=d["oracle_bn"], choices=ORACLE_BN,
                         help="PAGCP oracle: BN with running statistics, or each batch's (the loss after --bn-recalib)")
    # PAGCP to a FLOPs target (--target-flops; prune/methods/pagcp/budget.py), its trip rule, budget guards (engine/safeguards.py)
    g_pagcp.add_argument("--flops-tol", type=float, default=d["flops_tol"],
                         help="PAGCP --target-flops: end within target +- this FLOPs share")
    g_pagcp.add_argument("--flops-budget", default=d["flops_budget"], choices=BUDGET_MODES,
                         help="PAGCP --target-flops: budgeted greedy by loss per FLOP, or a search of the threshold scale")
    g_pagcp.add_argument("--search-images", type=int, default=d["search_images"],
                         help="PAGCP --target-flops: calibration images of the greedy's pricing / the cheap search passes")
    g_pagcp.add_argument("--pricing-rounds", type=int, default=d["pricing_rounds"],
                         help="PAGCP --target-flops (greedy): pricing rounds planned at least, one oracle call per unit each")
    g_pagcp.add_argument("--pricing-cut", type=float, default=d["pricing_cut"],
                         help="PAGCP --target-flops (greedy): plan enough rounds that none removes more than this "
                              "share of the FLOPs left (0 < x < 1)")
    g_pagcp.add_argument("--threshold-schedule", default=d["threshold_schedule"], choices=SCHEDULES,
                         help="PAGCP: per-unit threshold rate*lambda^i (reference) or rate x FLOPs share the cut removes")
    g_pagcp.add_argument("--trip", default=d["trip"], choices=TRIPS,
                         help="PAGCP: a cut trips when any task loss (reference) or their mean passes the threshold")
    g_pagcp.add_argument("--reference-protocol", action="store_true", default=d["reference_protocol"],
                         help="PAGCP with --initial_rate/--initial_thres: keep the reference pass's cut (else that pass "
                              "sets the FLOPs share and the improved oracle of --target-flops reaches it)")
    g_pagcp.add_argument("--force", action="store_true", help="accept a --target-flops below min_target_flops (0.1)")
    g_pagcp.add_argument("--model", default=None, help="reference flag: model name (informational)")
    g_pagcp.add_argument("--dataset", default=None, choices=("COCO", "VOC"),
                         help="reference flag: sets --data to coco.yaml / VOC.yaml")
    g_pagcp.add_argument("--pruned", action="store_true", help="reference flag: --weights is already pruned (informational)")
    g_pagcp.add_argument("--pruned-model", default="", help="reference flag: pruned model path (used as --weights if set)")


def parse_opt(argv=None) -> argparse.Namespace:
    """compress.py's options: defaults < the demo profile (no --weights) < a --cfg recipe < the command line."""
    d = {**defaults("train"), **defaults("compress")}
    p = build_parser(d)
    argv = sys.argv[1:] if argv is None else list(argv)
    opt = p.parse_args(argv)
    given = explicit_flags(p, argv)
    layers = []
    if not opt.weights and not opt.pruned_model and not opt.resume and not opt.cfg:
        layers.append(("the offline demo (no --weights)", defaults("compress").get("demo") or {}))
    if opt.cfg:
        layers.append((opt.cfg, load_recipe(opt.cfg)))
    for source, values in layers:
        for k, v in values.items():
            key = k.replace("-", "_")
            if not hasattr(opt, key):
                raise UsageError(f"{source}: unknown option '{k}' (use compress.py's flag names)")
            if key not in given:
                setattr(opt, key, v)
    opt.explicit = sorted(given | {k.replace("-", "_") for _, values in layers for k in values})  # engine/safeguards.py
    if opt.pruned_model:
        opt.weights = opt.pruned_model
    if opt.dataset and "--data" not in " ".join(argv if argv is not None else sys.argv[1:]):
        opt.data = {"COCO": "coco.yaml", "VOC": "VOC.yaml"}[opt.dataset]
    if opt.criterion is not None:
        c = opt.criterion
        opt.method = SEED_CRITERIA.get(int(c), c) if str(c).isdigit() else c
    opt.method = opt.method.lower()
    if opt.distill_flag:
        if "--no-distill" in (argv if argv is not None else sys.argv[1:]):
            raise UsageError("--distill and --no-distill contradict each other: give one")
        opt.distill = True
    del opt.distill_flag
    return opt


def load_recipe(path: str) -> dict:
    for f in (Path(path), ROOT / path, ROOT / "cfg" / "pagcp" / path, ROOT / "cfg" / "pagcp" / f"{path}.yaml"):
        if f.is_file():
            d = yaml.safe_load(f.read_text()) or {}
            if not isinstance(d, dict):
                raise UsageError(f"--cfg {f}: a recipe must be a mapping of flag: value")
            return d
    raise UsageError(f"--cfg {path}: recipe not found (see cfg/pagcp/)")


def resume_hint(opt, since: float) -> str:
    """How to continue after an interruption: the run folder this process wrote (opt.json newer than `since`)."""
    if opt is None:
        return "nothing was started; run the command again"
    if opt.resume:
        return f"continue with python compress.py --resume{'' if opt.resume is True else f' {opt.resume}'}"
    runs = [f.parent for f in Path(opt.project).glob("*/opt.json") if f.stat().st_mtime >= since]
    if runs:
        return f"continue with python compress.py --resume {max(runs, key=lambda d: (d / 'opt.json').stat().st_mtime)}"
    return "stopped before its run folder was written: nothing to resume; run the command again"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    opt, since = None, time.time() - 1  # file times may round down
    try:
        with sigterm_as_interrupt():
            opt = parse_opt(argv)
            if not opt.resume and len(ddp.device_ids(opt.device)) > 1:
                check_args(copy.copy(opt))  # bad flags: one line here rather than one per process
            rc = ddp.relaunch(opt.device, __file__, argv, opt.batch_size)  # --device 0,1: one process per device
            if rc is not None:
                return rc
            with ddp.process_group(opt.device):  # under torchrun: the group every round's DDP fine-tuning uses
                run(opt)
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError, ValueError) as e:
        where = f"[rank {ddp.rank()}] " if not ddp.is_main() else ""
        print(f"ERROR: {where}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, status = interrupt_status(e)
        print(f"{what}: {resume_hint(opt, since)}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
