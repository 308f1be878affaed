# AGPL-3.0 License
"""Compress a YOLO detector by structured channel pruning: rounds of prune -> fine-tune -> validate.

    python compress.py                                   # offline demo: base model on the built-in data, PAGCP, fine-tune
    python compress.py --weights yolov5n.pt --data coco128.yaml --img 320 --initial_rate 0.02 --epochs 5
    python compress.py --model yolov5m --dataset COCO --data coco.yaml --batch 64 --weights W \
        --initial_rate 0.06 --initial_thres 6. --topk 0.8 --exp --sequential --device 0     # the PAGCP paper's command
    python compress.py --method l1 --target-flops 0.7 --epochs 0 --weights yolov5n.pt --data coco128.yaml
    python compress.py --resume runs/compress/exp3         # continue an interrupted run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from utils.config import defaults, explicit_flags
from utils.general import UsageError


def parse_opt(argv=None) -> argparse.Namespace:
    from train import add_train_args

    d = {**defaults("train"), **defaults("compress")}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default=None, help="checkpoint (.pt) or model yaml (fresh model)")
    p.add_argument("--data", type=str, default=d["data"], help="dataset yaml or 'shapes' (built-in)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=d["imgsz"], help="image size (pixels)")
    p.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"], help="batch size")
    p.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--workers", type=int, default=d["workers"], help="max dataloader workers")
    p.add_argument("--method", default=d["method"],
                   help="pruning method / criterion: l1 l2 l1_largest l2_largest bn bnl1 random taylor slim")
    p.add_argument("--criterion", default=None, help="alias of --method; seed 002's 0-6 are accepted")
    p.add_argument("--target-flops", type=float, default=d["target_flops"], help="keep this share of base FLOPs")
    p.add_argument("--ratio", type=float, default=d["ratio"], help="share of channels to remove per group")
    # PAGCP (the reference compress.py's flags and names)
    p.add_argument("--initial_rate", type=float, default=d["initial_rate"], help="PAGCP: first unit's allowed loss growth")
    p.add_argument("--initial_thres", type=float, default=d["initial_thres"], help="PAGCP: cap of cumulative growth")
    p.add_argument("--topk", type=float, default=d["topk"], help="PAGCP: keep the best share of pruned units")
    p.add_argument("--exp", action="store_true", help="PAGCP: thresholds decay so their product is initial_thres")
    p.add_argument("--sequential", action="store_true", help="accepted for the reference's command (always sequential)")
    p.add_argument("--compression", default=d["compression"], choices=("global", "backbone"), help="PAGCP units")
    p.add_argument("--prunemethod", default=d["prunemethod"], choices=("L1", "L2", "l1", "l2"), help="PAGCP saliency")
    p.add_argument("--ratio-step", type=float, default=d["ratio_step"], help="PAGCP: ratio grid step (0.05 = reference)")
    p.add_argument("--ratio-search", default=d["ratio_search"], choices=("linear", "gallop"),
                   help="PAGCP: every ratio up to the first trip (reference), or galloping + bisection (fewer calls)")
    p.add_argument("--round", type=int, default=0, help="PAGCP round index (with --rate_slope/--thres_slope)")
    p.add_argument("--rate_slope", type=float, default=0.0, help="PAGCP: initial_rate += round * rate_slope")
    p.add_argument("--thres_slope", type=float, default=0.0, help="PAGCP: initial_thres += round * thres_slope")
    p.add_argument("--model", default=None, help="reference flag: model name (informational)")
    p.add_argument("--dataset", default=None, choices=("COCO", "VOC"), help="reference flag: default --data")
    p.add_argument("--pruned", action="store_true", help="reference flag: --weights is already pruned (informational)")
    p.add_argument("--pruned-model", default="", help="reference flag: pruned model path (used as --weights if set)")
    p.add_argument("--pruning-params", default=None,
                   help="seed 002: a rate for every layer, or \"[(layer, rate), ...]\" (layers: --show-groups)")
    p.add_argument("--fisher-norm", default=d["fisher_norm"], choices=("flops", "act", "none"),
                   help="--method fisher: importance per FLOP or per activation removed")
    p.add_argument("--interval", type=int, default=d["interval"], help="--method fisher: steps between prunes")
    p.add_argument("--channels-per-step", type=int, default=d["channels_per_step"],
                   help="--method fisher: channels masked at each prune")
    p.add_argument("--slim-threshold", type=float, default=None, help="--method slim: prune BN |gamma| below this")
    p.add_argument("--slim-percent", type=float, default=None, help="--method slim: prune this share of all gammas")
    p.add_argument("--global", dest="global_ranking", action="store_true", default=d["global_ranking"],
                   help="one ranking across all groups (scores normalized per group)")
    p.add_argument("--bias-compensation", action="store_true", default=d["bias_compensation"],
                   help="fold removed channels' mean activation into their consumers (uses --calib-images)")
    p.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=d["prefix_cache"],
                   help="PAGCP oracle: start forwards at the unit's first layer, reusing earlier layers' outputs")
    p.add_argument("--oracle-bn", default=d["oracle_bn"], choices=("running", "batch"),
                   help="PAGCP oracle: BN with running statistics, or each batch's (the loss after --bn-recalib)")
    p.add_argument("--bn-recalib", type=int, default=d["bn_recalib"],
                   help="re-estimate BN statistics on this many training images after each cut (0 = off)")
    # PAGCP to a FLOPs target (--target-flops; prune/pagcp_budget.py), its trip rule, budget guards (engine/safeguards.py)
    p.add_argument("--flops-tol", type=float, default=d["flops_tol"],
                   help="PAGCP --target-flops: end within target +- this FLOPs share")
    p.add_argument("--flops-budget", default=d["flops_budget"], choices=("greedy", "search"),
                   help="PAGCP --target-flops: budgeted greedy by loss per FLOP, or a search of the threshold scale")
    p.add_argument("--search-images", type=int, default=d["search_images"],
                   help="PAGCP --target-flops: calibration images of the greedy's pricing / the cheap search passes")
    p.add_argument("--threshold-schedule", default=d["threshold_schedule"], choices=("reference", "flops"),
                   help="PAGCP: per-unit threshold rate*lambda^i (reference) or rate x FLOPs share the cut removes")
    p.add_argument("--trip", default=d["trip"], choices=("any", "mean"),
                   help="PAGCP: a cut trips when any task loss (reference) or their mean passes the threshold")
    p.add_argument("--force", action="store_true", help="accept a --target-flops below min_target_flops (0.1)")
    p.add_argument("--divisor", type=int, default=d["divisor"], help="round kept channels up to a multiple")
    p.add_argument("--min-channels", type=int, default=d["min_channels"], help="minimum channels kept per group")
    p.add_argument("--ignore", nargs="*", default=d["ignore"], help="module-name patterns never pruned")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="fine-tuning epochs after each pruning round")
    p.add_argument("--rounds", type=int, default=d["rounds"], help="prune -> fine-tune -> validate rounds")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="continue the latest (or given) run")
    p.add_argument("--distill", action="store_true", default=d["distill"],
                   help="fine-tune with the unpruned model as output-distillation teacher")
    p.add_argument("--no-latency", dest="latency", action="store_false", default=d["latency"],
                   help="skip the base vs pruned onnxruntime latency measurement")
    p.add_argument("--base-cfg", default=d["base_cfg"], help="no --weights: model yaml of the base model to train")
    p.add_argument("--base-epochs", type=int, default=d["base_epochs"], help="no --weights: base training epochs")
    p.add_argument("--base-hyp", default=d["base_hyp"], help="no --weights: base training hyperparameters")
    p.add_argument("--base-optimizer", default=d["base_optimizer"], help="no --weights: base training optimizer")
    add_train_args(p, d)
    p.add_argument("--calib-images", type=int, default=d["calib_images"], help="images for gradient criteria")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed")
    p.add_argument("--show-groups", action="store_true", help="print every channel group and why fixed ones are")
    p.add_argument("--project", default=d["project"], help="save to project/name")
    p.add_argument("--name", default=d["name"], help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    p.add_argument("--cfg", default="", help="YAML recipe setting any of these flags (cfg/pagcp/*.yaml); the CLI wins")
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
        from prune.importance import SEED_CRITERIA

        c = opt.criterion
        opt.method = SEED_CRITERIA.get(int(c), c) if str(c).isdigit() else c
    opt.method = opt.method.lower()
    return opt


def load_recipe(path: str) -> dict:
    import yaml

    from utils.config import ROOT

    for f in (Path(path), ROOT / path, ROOT / "cfg" / "pagcp" / path, ROOT / "cfg" / "pagcp" / f"{path}.yaml"):
        if f.is_file():
            d = yaml.safe_load(f.read_text()) or {}
            if not isinstance(d, dict):
                raise UsageError(f"--cfg {f}: a recipe must be a mapping of flag: value")
            return d
    raise UsageError(f"--cfg {path}: recipe not found (see cfg/pagcp/)")


def main(argv=None) -> int:
    from engine.data import DataConfigError
    from utils.checkpoint import CheckpointError

    try:
        opt = parse_opt(argv)
        from engine.compress import run

        run(opt)
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with python compress.py --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
