# AGPL-3.0 License
"""Compress a YOLO detector by structured channel pruning.

One-shot engine methods (prune once, validate, save):
    python compress.py --method l1 --target-flops 0.7 --weights yolov5n.pt --data coco128.yaml --img 320
    python compress.py --method l2 --ratio 0.3 --global --weights yolov8n.yaml --data shapes
"""

from __future__ import annotations

import argparse
import sys

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from utils.config import defaults
from utils.general import UsageError


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults("compress")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--round", type=int, default=0, help="PAGCP round index (with --rate_slope/--thres_slope)")
    p.add_argument("--rate_slope", type=float, default=0.0, help="PAGCP: initial_rate += round * rate_slope")
    p.add_argument("--thres_slope", type=float, default=0.0, help="PAGCP: initial_thres += round * thres_slope")
    p.add_argument("--model", default=None, help="reference flag: model name (informational)")
    p.add_argument("--dataset", default=None, choices=("COCO", "VOC"), help="reference flag: default --data")
    p.add_argument("--pruned", action="store_true", help="reference flag: --weights is already pruned (informational)")
    p.add_argument("--pruned-model", default="", help="reference flag: pruned model path (used as --weights if set)")
    p.add_argument("--pruning-params", default=None,
                   help="seed 002: a rate for every layer, or \"[(layer, rate), ...]\" (layers: --show-groups)")
    p.add_argument("--slim-threshold", type=float, default=None, help="--method slim: prune BN |gamma| below this")
    p.add_argument("--slim-percent", type=float, default=None, help="--method slim: prune this share of all gammas")
    p.add_argument("--global", dest="global_ranking", action="store_true", default=d["global_ranking"],
                   help="one ranking across all groups (scores normalized per group)")
    p.add_argument("--bias-compensation", action="store_true", default=d["bias_compensation"],
                   help="fold removed channels' mean activation into their consumers (uses --calib-images)")
    p.add_argument("--divisor", type=int, default=d["divisor"], help="round kept channels up to a multiple")
    p.add_argument("--min-channels", type=int, default=d["min_channels"], help="minimum channels kept per group")
    p.add_argument("--ignore", nargs="*", default=d["ignore"], help="module-name patterns never pruned")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="fine-tuning epochs after pruning")
    p.add_argument("--calib-images", type=int, default=d["calib_images"], help="images for gradient criteria")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed")
    p.add_argument("--show-groups", action="store_true", help="print every channel group and why fixed ones are")
    p.add_argument("--project", default=d["project"], help="save to project/name")
    p.add_argument("--name", default=d["name"], help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    opt = p.parse_args(argv)
    if opt.pruned_model:
        opt.weights = opt.pruned_model
    if opt.weights is None:
        raise UsageError("--weights is required (a checkpoint, or a model yaml such as yolov5n.yaml)")
    if opt.dataset and "--data" not in " ".join(argv if argv is not None else sys.argv[1:]):
        opt.data = {"COCO": "coco.yaml", "VOC": "VOC.yaml"}[opt.dataset]
    if opt.criterion is not None:
        from prune.importance import SEED_CRITERIA

        c = opt.criterion
        opt.method = SEED_CRITERIA.get(int(c), c) if str(c).isdigit() else c
    opt.method = opt.method.lower()
    return opt


def main(argv=None) -> int:
    from engine.data import DataConfigError
    from utils.checkpoint import CheckpointError

    try:
        opt = parse_opt(argv)
        if opt.epochs:
            raise UsageError("fine-tuning after one-shot pruning arrives with train.py; use --epochs 0 for now")
        from engine.compress import run_one_shot

        run_one_shot(opt)
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
