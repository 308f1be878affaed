# AGPL-3.0 License
"""Train or fine-tune a YOLO detector (YOLOv5, YOLOv7, ultralytics; full or pruned).

Usage:
    python train.py --weights yolov5n.pt --data coco128.yaml --hyp finetune --epochs 3 --img 320
    python train.py --weights runs/compress/exp/pruned.pt --data coco128.yaml --epochs 10     # keeps the pruned structure
    python train.py --cfg yolov5n.yaml --data shapes --epochs 30 --img 320                    # from scratch
    python train.py --weights yolov5n.pt --data VOC.yaml --sparsity 6e-4                      # network slimming
    python train.py --weights pruned.pt --teacher yolov5s.pt --data coco128.yaml             # distillation
    python train.py --resume                                                                  # continue runs/train/exp*/weights/last.pt
    torchrun --nproc_per_node 2 train.py --weights yolov5s.pt --data coco.yaml --batch 64    # DDP (or --device 0,1)
"""

from __future__ import annotations

import argparse
import sys

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from utils.config import defaults
from utils.general import UsageError


def add_train_args(p: argparse.ArgumentParser, d: dict) -> None:
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
    p.add_argument("--teacher", default=d["teacher"], help="teacher checkpoint for output distillation")
    p.add_argument("--dist", type=float, default=d["dist"], help="distillation loss weight")
    p.add_argument("--noval", action="store_true", default=d["noval"], help="only validate the final epoch")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=d["amp"], help="no mixed precision on CUDA")
    p.add_argument("--sync-bn", action="store_true", default=d["sync_bn"], help="SyncBatchNorm (DDP only)")
    p.add_argument("--nbs", type=int, default=d["nbs"], help="nominal batch size")


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults("train")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=str, default="", help="initial weights: checkpoint (full or pruned)")
    p.add_argument("--cfg", type=str, default="", help="model yaml, to train from scratch")
    p.add_argument("--data", type=str, default=d["data"], help="dataset yaml or 'shapes' (built-in)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="total training epochs")
    p.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"], help="total batch size, all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=d["imgsz"], help="train, val image size")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the most recent (or given) run")
    p.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--workers", type=int, default=d["workers"], help="max dataloader workers (per process)")
    p.add_argument("--project", default=d["project"], help="save to project/name")
    p.add_argument("--name", default=d["name"], help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--seed", type=int, default=d["seed"], help="global training seed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the DDP launcher")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    add_train_args(p, d)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from engine.data import DataConfigError
    from utils.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opt = parse_opt(argv)
        from engine.distributed import relaunch

        rc = relaunch(opt.device, __file__, argv, opt.batch_size)  # --device 0,1: one process per device
        if rc is not None:
            return rc
        from engine.trainer import Trainer, train_options

        opt = train_options(**{k: v for k, v in vars(opt).items()})
        Trainer(opt).train()
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with python train.py --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
