# AGPL-3.0 License
"""Train or fine-tune a YOLO detector (YOLOv5, YOLOv7, ultralytics; full or pruned).

Usage:
    python train.py --weights yolov5n.pt --data coco128.yaml --hyp finetune --epochs 3 --img 320
    python train.py --weights runs/compress/exp/pruned.pt --data coco128.yaml --epochs 10     # pruned: recovery recipe
    python train.py --cfg yolov5n.yaml --data shapes --epochs 30 --img 320                    # from scratch
    python train.py --weights yolov5n.pt --data VOC.yaml --sparsity 6e-4                      # network slimming
    python train.py --weights pruned.pt --teacher yolov5s.pt --data coco128.yaml             # distillation
    python train.py --resume                                                                  # continue runs/train/exp*/weights/last.pt
    python train.py --weights yolov5n.pt --data coco128.yaml --img 640 640 --pruning-params "[(12, 0.25), (45, 0.75)]" \
        --criterion 0                                                                         # seed 002: prune at load, fine-tune
    torchrun --nproc_per_node 2 train.py --weights yolov5s.pt --data coco.yaml --batch 64    # DDP (or --device 0,1)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from data.datasets import DataConfigError, check_dataset
from engine.distill import DISTILL_MODES
from engine.recipe import apply_recipe
from engine.sensitivity import (
    PRUNING_ARGS,
    add_pruning_args,
    check_seed_flags,
    load_pruned_model,
    strip_sensitivity_args,
)
from engine.trainer import Trainer, train_options
from utils.checkpoint import CheckpointError
from utils.config import HelpFormatter, defaults, explicit_flags
from utils.distributed import relaunch
from utils.files import write_json
from utils.general import LOGGER, UsageError, interrupt_status, sigterm_as_interrupt


def _prune_at_load(opt):
    """Seed 002's train.py --pruning-params: the loaded model pruned by --criterion, to be fine-tuned (the
    pruning record goes to the run folder as pruning.json)."""
    weights = opt.weights or opt.cfg
    if not weights:
        raise UsageError("--pruning-params prunes the loaded model: give --weights")
    nc = check_dataset(opt.data, splits=("train",))["nc"] if Path(weights).suffix in (".yaml", ".yml") else None
    model, info = load_pruned_model(weights, opt.pruning_params, opt.criterion, opt.imgsz, nc=nc,
                                    trust=opt.trust_checkpoint, seed=opt.seed)
    record = {"pruning_params": opt.pruning_params, "criterion": info["criterion"], "weights": str(weights),
              "removed": info["removed"], "params": info["params"], "gflops": info["gflops"], "imgsz": opt.imgsz}

    def save_record(trainer):
        if trainer.main:
            write_json(record, trainer.save_dir / "pruning.json")

    return model, {"on_train_start": [save_record]}


def add_train_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, d: dict) -> None:
    """Flags shared by train.py and compress.py's fine-tuning (YOLOv5 names)."""
    p.add_argument("--hyp", type=str, default=d["hyp"], help="hyperparameters yaml (or name in data/hyps)")
    p.add_argument("--optimizer", default=d["optimizer"], choices=("SGD", "Adam", "AdamW"), help="optimizer")
    p.add_argument("--cos-lr", action="store_true", default=d["cos_lr"], help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"], help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=d["patience"], help="EarlyStopping patience (epochs)")
    p.add_argument("--freeze", nargs="+", type=int, default=d["freeze"], help="freeze layers: first N, or indices")
    p.add_argument("--save-period", type=int, default=d["save_period"], help="save a checkpoint every N epochs")
    p.add_argument("--close-mosaic", type=int, default=d["close_mosaic"], help="no mosaic in the last N epochs")
    p.add_argument("--sparsity", type=float, default=d["sparsity"], help="L1 penalty on BN scales (slimming)")
    p.add_argument("--sparsity-ignore", nargs="*", default=d["sparsity_ignore"], help="BN name patterns not penalized")
    p.add_argument("--teacher", default=d["teacher"], help="teacher checkpoint for distillation (same family and classes)")
    p.add_argument("--distill-mode", default=d["distill_mode"], choices=DISTILL_MODES,
                   help="distil head outputs, the features feeding the head (learned projectors), or both")
    p.add_argument("--dist", type=float, default=d["dist"], help="output distillation loss weight")
    p.add_argument("--dist-feat", type=float, default=d["dist_feat"], help="feature distillation loss weight")
    p.add_argument("--noval", action="store_true", default=d["noval"], help="only validate the final epoch")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=d["amp"], help="no mixed precision on CUDA")
    p.add_argument("--sync-bn", action="store_true", default=d["sync_bn"], help="SyncBatchNorm (DDP only)")
    p.add_argument("--nbs", type=int, default=d["nbs"], help="nominal batch size")
    p.add_argument("--schedule", default=d["schedule"], choices=("epochs", "steps"),
                   help="lr/warmup/EMA schedule: epochs (YOLOv5's) or steps (in optimizer steps, cfg/default.yaml)")


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults("train")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                epilog="Defaults come from cfg/default.yaml (train: section). Without --data the "
                                       "built-in shapes dataset is used.")
    g_data = p.add_argument_group("data and model")
    g_data.add_argument("--weights", type=str, default="", help="initial weights: checkpoint (full or pruned)")
    g_data.add_argument("--cfg", type=str, default="", help="model yaml, to train from scratch")
    g_data.add_argument("--data", type=str, default=d["data"], help="dataset yaml, or 'shapes' (the built-in synthetic set)")
    g_data.add_argument("--imgsz", "--img", "--img-size", type=int, nargs="+", default=[d["imgsz"]],
                        help="train, val image size (pixels); YOLOv7's '--img 640 640' (train, test) is accepted")
    g_data.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"], help="total batch size, all GPUs")
    g_data.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    g_data.add_argument("--workers", type=int, default=d["workers"], help="max dataloader workers (per process)")
    g_data.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    g_data.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    g_train = p.add_argument_group("training (also compress.py's fine-tuning)")
    g_train.add_argument("--epochs", type=int, default=d["epochs"], help="total training epochs")
    g_train.add_argument("--resume", nargs="?", const=True, default=False, help="resume the most recent (or given) run")
    g_train.add_argument("--seed", type=int, default=d["seed"], help="global training seed")
    g_train.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the DDP launcher")
    add_train_args(g_train, d)
    g_out = p.add_argument_group("output")
    g_out.add_argument("--project", default=d["project"], help="save to project/name")
    g_out.add_argument("--name", default=d["name"], help="save to project/name")
    g_out.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    add_pruning_args(p.add_argument_group("seed 002: prune at load, then fine-tune"), criterion=True)
    opt = p.parse_args(argv)
    if len(opt.imgsz) > 2:
        raise UsageError(f"--imgsz takes one size, or two (train, test) as YOLOv7 does; got {opt.imgsz}")
    if len(opt.imgsz) == 2 and opt.imgsz[0] != opt.imgsz[1]:
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz[0]} {opt.imgsz[1]}: training and validating at {opt.imgsz[0]} "
                       "(one size for both here)")
    opt.imgsz = opt.imgsz[0]
    given = explicit_flags(p, sys.argv[1:] if argv is None else argv)
    check_seed_flags(opt, given)
    if opt.pruning_params is not None and opt.resume:
        raise UsageError("--resume continues the pruned run from its last.pt: drop --pruning-params")
    if "data" not in given and opt.data == "shapes" and not opt.resume:
        LOGGER.info("no --data: training on the built-in shapes dataset (4 synthetic classes, generated offline); "
                    "pass --data your.yaml for your own")
    apply_recipe(opt, given)  # a pruned --weights: the recovery recipe's hyp/nbs unless given
    return opt


def resume_hint(opt, since: float) -> str:
    """How to continue after an interruption: the last.pt this process wrote (newer than `since`)."""
    if opt is None:
        return "nothing was started; run the command again"
    if opt.resume:
        return f"continue with python train.py --resume{'' if opt.resume is True else f' {opt.resume}'}"
    root = Path(opt.save_dir) if getattr(opt, "save_dir", None) else Path(opt.project)
    lasts = [f for f in root.rglob("last.pt") if f.stat().st_mtime >= since]
    if lasts:
        return f"continue with python train.py --resume {max(lasts, key=lambda f: f.stat().st_mtime)}"
    return "stopped before the first epoch's checkpoint (last.pt): nothing to resume; run the command again"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    opt, since = None, time.time() - 1  # file times may round down
    try:
        with sigterm_as_interrupt():
            opt = parse_opt(argv)
            rc = relaunch(opt.device, __file__, argv, opt.batch_size)  # --device 0,1: one process per device
            if rc is not None:
                return rc
            model, callbacks = _prune_at_load(opt) if opt.pruning_params is not None else (None, None)
            opt = train_options(**strip_sensitivity_args(vars(opt), PRUNING_ARGS))
            Trainer(opt, model=model, callbacks=callbacks).train()
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, status = interrupt_status(e)
        print(f"{what}: {resume_hint(opt, since)}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
