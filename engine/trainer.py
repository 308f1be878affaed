# AGPL-3.0 License
"""Training and fine-tuning for every family, full or pruned, on one device or many (DDP).

The loop is YOLOv5's (SGD/Adam with three parameter groups, warmup, one-cycle or cosine LR, gradient
accumulation to a nominal batch of 64, EMA, AMP on CUDA, fitness = 0.1·mAP50 + 0.9·mAP50-95) built from
ultralytics parts: its augmenting YOLODataset/dataloader (mosaic, mixup, HSV, affine), ModelEMA and
one_cycle. The model object is trained as given — never rebuilt from a yaml — so a pruned model keeps
its structure, and checkpoints are ordinary ones that load through the allowlisted loader.

Hooks for policies that act during training (Group Fisher, masks): `callbacks[event]` lists of
callables taking the trainer; events are CALLBACK_EVENTS.
"""

from __future__ import annotations

import copy
import csv
import datetime
import io
import math
import os
import random
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from data.datasets import DATA_DIR, build_val_loader, check_dataset, checked_dataset
from engine.distill import OutputDistiller
from models.loss import build_criterion
from engine.validation.common import ValResult, format_table, validate
from models.loader import class_rows_kept, fuse_model, load_model, reset_classes
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import defaults
from utils.files import write_text
from utils.general import LOGGER, UsageError, increment_path

CALLBACK_EVENTS = ("on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_after_backward",
                   "on_optimizer_step",
                   "on_train_epoch_end", "on_fit_epoch_end", "on_train_end")
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
                "fliplr", "mosaic", "mixup", "copy_paste")
METRIC_KEYS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


@dataclass
class TrainResult:
    save_dir: Path
    best: Path | None
    last: Path | None
    model: nn.Module  # the EMA model of the best epoch (or the last one when nothing was validated)
    metrics: dict = field(default_factory=dict)  # validation of the best epoch
    epochs: int = 0
    seconds: float = 0.0


def load_hyp(hyp: str | Path | dict | None) -> dict:
    """A hyp yaml path, a name in data/hyps ('finetune', 'scratch-low', 'hyp.finetune.yaml'), or a dict."""
    if isinstance(hyp, dict):
        return dict(hyp)
    name = str(hyp or defaults("train")["hyp"])
    for p in (Path(name), DATA_DIR.parent / name, DATA_DIR / "hyps" / name, DATA_DIR / "hyps" / f"hyp.{name}.yaml",
              DATA_DIR / "hyps" / f"{name}.yaml", DATA_DIR / "hyps" / Path(name).name):  # YOLOv7's data/hyp.*.yaml
        if p.is_file():
            h = yaml.safe_load(p.read_text()) or {}
            if not isinstance(h, dict):
                raise UsageError(f"hyp file {p} must be a mapping of hyperparameters")
            return h
    raise UsageError(f"--hyp '{name}' not found; give a yaml path or one of "
                     f"{', '.join(sorted(p.stem.removeprefix('hyp.') for p in (DATA_DIR / 'hyps').glob('*.yaml')))}")


def train_options(**kw) -> Namespace:
    """train.py's options from cfg/default.yaml, overridden by keyword arguments (the Python API)."""
    d = defaults("train")
    d.update(weights="", cfg="", resume=False, nosave=False, single_cls=False, name="exp", exist_ok=False,
             save_dir=None, local_rank=-1, progress=True, trust_checkpoint=False)
    unknown = set(kw) - set(d)
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    d.update(kw)
    return Namespace(**d)


def check_options(opt: Namespace) -> None:
    if opt.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {opt.epochs}")
    if opt.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opt.batch_size}")
    if opt.optimizer not in ("SGD", "Adam", "AdamW"):
        raise UsageError(f"unknown --optimizer '{opt.optimizer}': choose SGD, Adam or AdamW")
    if opt.sparsity < 0:
        raise UsageError(f"--sparsity must be >= 0, got {opt.sparsity}")
    if opt.sparsity_ignore and not opt.sparsity:
        raise UsageError("--sparsity-ignore only applies to sparsity training: add --sparsity S (e.g. 6e-4)")
    if not opt.weights and not opt.cfg:
        raise UsageError("give --weights (a checkpoint to fine-tune) or --cfg (a model yaml to train from scratch)")


def find_last(project: str | Path) -> Path:
    runs = sorted(Path(project).rglob("last.pt"), key=os.path.getmtime)
    if not runs:
        raise UsageError(f"--resume: no last.pt under {project}; pass --resume path/to/last.pt")
    return runs[-1]


def resume_options(opt: Namespace) -> tuple[Namespace, dict]:
    """--resume [last.pt]: the interrupted run's options and state (epochs, data, hyp, ... as first given)."""
    last = Path(opt.resume) if isinstance(opt.resume, (str, Path)) and str(opt.resume) not in ("", "True") \
        else find_last(opt.project)
    if not last.is_file():
        raise UsageError(f"--resume {last}: no such checkpoint")
    ckpt = load_checkpoint(last, trust=opt.trust_checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("optimizer") is None or "opt" not in ckpt:
        raise UsageError(f"--resume {last}: this checkpoint has no training state (a finished or stripped run); "
                         "start a new run with --weights instead")
    saved = Namespace(**{**vars(train_options()), **ckpt["opt"]})
    saved.resume, saved.save_dir = str(last), str(last.parent.parent)
    saved.device, saved.workers = opt.device, opt.workers  # the machine may differ
    return saved, ckpt


class Trainer:
    def __init__(self, opt: Namespace, model: nn.Module | None = None, callbacks: dict | None = None,
                 teacher_model: nn.Module | None = None):
        self.opt, self._given_model, self._teacher_model = opt, model, teacher_model
        self.callbacks = {e: list((callbacks or {}).get(e, [])) for e in CALLBACK_EVENTS}
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        single = self.world <= 1  # (torchrun --nproc_per_node 1 is one process: no sampler, no process group)
        self.rank = -1 if single else int(os.environ.get("RANK", -1))
        self.local_rank = -1 if single else int(os.environ.get("LOCAL_RANK", -1))
        self.main = self.rank in (-1, 0)
        self.stop = False
        self.epoch = 0
        self._gamma_history: list[np.ndarray] = []

    # ------------------------------------------------------------------ setup
    def _run_callbacks(self, event: str) -> None:
        for cb in self.callbacks[event]:
            cb(self)

    def _setup_device(self) -> torch.device:
        from utils.distributed import setup

        # a process group compress.py opened for its whole run outlives this training (its next round needs it)
        self._owns_group = self.world > 1 and not dist.is_initialized()
        return setup(self.opt.device)

    def _save_dir(self) -> Path:
        opt = self.opt
        if opt.save_dir:
            path = Path(opt.save_dir)
            path.mkdir(parents=True, exist_ok=True) if self.main else None
        else:
            path = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=self.main) \
                if self.main else None
        if self.world > 1:  # every rank must write to the folder rank 0 chose
            box = [str(path) if path else None]
            dist.broadcast_object_list(box, src=0)
            path = Path(box[0])
        return path

    def _build_model(self, data: dict, ckpt: dict | None) -> nn.Module:
        opt = self.opt
        if ckpt is not None:  # resume: the raw (non-EMA) training model of the last epoch
            from models.loader import _finalize

            return _finalize(ckpt["model"]).float()
        if self._given_model is not None:
            model = self._given_model
        elif opt.weights and Path(str(opt.weights)).suffix not in (".yaml", ".yml"):
            model = load_model(opt.weights, trust=opt.trust_checkpoint)
            if opt.cfg:
                LOGGER.warning("both --weights and --cfg given: training the checkpoint's own structure "
                               "(a checkpoint, pruned or not, is never rebuilt from a yaml)")
        else:
            model = load_model(opt.cfg or opt.weights, nc=1 if opt.single_cls else data["nc"])
        nc = 1 if opt.single_cls else data["nc"]  # --single-cls: one class, as YOLOv5's train.py
        names = {0: "item"} if opt.single_cls and data["nc"] != 1 else dict(data["names"])
        if int(model.nc) != nc:
            kept = class_rows_kept(model, nc, names)
            LOGGER.info(f"new class head: {model.nc} -> {nc} classes for {data['yaml_file']}"
                        + (" (--single-cls)" if opt.single_cls else "")
                        + (f" (learned rows kept for {', '.join(names[j] for j in kept)})" if kept else ""))
            reset_classes(model, nc, names)
        model.names = names
        return model.float()

    def _prepare_params(self, model: nn.Module) -> None:
        opt = self.opt
        freeze = list(opt.freeze) if isinstance(opt.freeze, (list, tuple)) else [int(opt.freeze)]
        layers = freeze if len(freeze) > 1 else list(range(freeze[0] if freeze else 0))
        prefixes = tuple(f"model.{x}." for x in layers)
        for name, p in model.named_parameters():
            # released checkpoints are saved with requires_grad off; the ultralytics DFL conv stays fixed
            p.requires_grad_(not (name.startswith(prefixes) or ".dfl" in name))

    def _optimizer(self, model: nn.Module, accumulate: int, batch: int) -> torch.optim.Optimizer:
        """YOLOv5's three groups: biases (no decay, warmup from warmup_bias_lr), decayed weights, and
        normalization scales / implicit vectors (no decay)."""
        h, opt = self.hyp, self.opt
        biases, decayed, plain = [], [], []
        norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
        for m in model.modules():
            for p_name, p in m.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if p_name == "bias":
                    biases.append(p)
                elif isinstance(m, norm_types) or p.ndim <= 1 or "implicit" in p_name:
                    plain.append(p)
                else:
                    decayed.append(p)
        lr, momentum = h.get("lr0", 0.01), h.get("momentum", 0.937)
        if opt.optimizer == "SGD":
            optim = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
        else:
            cls = torch.optim.Adam if opt.optimizer == "Adam" else torch.optim.AdamW
            optim = cls(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
        wd = h.get("weight_decay", 5e-4) * batch * accumulate / opt.nbs
        optim.add_param_group({"params": decayed, "weight_decay": wd})
        optim.add_param_group({"params": plain, "weight_decay": 0.0})
        LOGGER.info(f"optimizer: {opt.optimizer}(lr={lr}) with parameter groups {len(plain)} weight(decay=0.0), "
                    f"{len(decayed)} weight(decay={wd:.2e}), {len(biases)} bias")
        return optim

    def _train_loader(self, data: dict, batch: int, stride: int):
        from ultralytics.cfg import get_cfg
        from ultralytics.data.build import build_dataloader, build_yolo_dataset

        aug = {k: self.hyp[k] for k in AUGMENT_KEYS if k in self.hyp}
        self.data_cfg = get_cfg(overrides={"imgsz": self.opt.imgsz, "task": "detect", "single_cls": self.opt.single_cls,
                                           "cache": False, "fraction": 1.0, "rect": False, **aug})
        from ultralytics.utils.torch_utils import torch_distributed_zero_first

        with torch_distributed_zero_first(self.local_rank):  # rank 0 writes the label cache first
            dataset = checked_dataset(lambda: build_yolo_dataset(self.data_cfg, data["train"], batch,
                                                                 {**data, "channels": 3}, mode="train", stride=stride),
                                      f"{data['yaml_file']} 'train'")
        workers = min(self.opt.workers, os.cpu_count() or 1)
        loader = build_dataloader(dataset, batch, workers, shuffle=True, rank=self.rank,
                                  device=self.device)
        return dataset, loader

    # ------------------------------------------------------------------ main loop
    def train(self) -> TrainResult:
        t_start = time.time()
        opt = self.opt
        ckpt = None
        if opt.resume:
            opt, ckpt = resume_options(opt)
            self.opt = opt
        check_options(opt)
        self.device = device = self._setup_device()
        seed = int(opt.seed) + max(self.rank, 0)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        self.hyp = load_hyp(opt.hyp)
        if opt.label_smoothing:
            self.hyp["label_smoothing"] = opt.label_smoothing
        from ultralytics.utils.torch_utils import torch_distributed_zero_first

        with torch_distributed_zero_first(self.local_rank):
            data = check_dataset(opt.data, splits=("train", "val"))
        self.data = data
        model = self._build_model(data, ckpt).to(device)
        self._prepare_params(model)
        stride = int(max(float(model.stride.max()), 32))
        imgsz = math.ceil(opt.imgsz / stride) * stride
        if imgsz != opt.imgsz:
            LOGGER.warning(f"--imgsz {opt.imgsz} must be a multiple of the max stride {stride}, using {imgsz}")
            opt.imgsz = imgsz
        if opt.batch_size % self.world:
            raise UsageError(f"--batch-size {opt.batch_size} must be a multiple of the {self.world} processes")
        batch = opt.batch_size // self.world
        accumulate = max(round(opt.nbs / opt.batch_size), 1)
        self.model = model
        self.criterion = build_criterion(model, self.hyp, imgsz)
        self.loss_names = tuple(self.criterion.names)
        self.sparsity = None
        if opt.sparsity:  # before the run folder exists: a bad --sparsity-ignore pattern writes nothing
            from prune.methods.slim import SparsityPenalty

            self.sparsity = SparsityPenalty(model, opt.sparsity, opt.sparsity_ignore, batch * accumulate * self.world,
                                            opt.nbs)
            if self.sparsity.ignored and self.main:
                LOGGER.info(f"--sparsity-ignore {' '.join(opt.sparsity_ignore)}: {len(self.sparsity.ignored)} "
                            f"BatchNorm layer(s) not penalized: {', '.join(self.sparsity.ignored)}")

        self.train_set, loader = self._train_loader(data, batch, stride)
        self.nb = nb = len(loader)  # batches per epoch (callbacks read it)
        val_loader = build_val_loader(data, "val", imgsz, batch * 2, stride, opt.workers, opt.single_cls) \
            if self.main else None
        # the inputs (weights, data, labels) are usable: only now is the run folder created
        self.save_dir = save_dir = self._save_dir()
        wdir = save_dir / "weights"
        if self.main:
            wdir.mkdir(parents=True, exist_ok=True)
            write_text(save_dir / "hyp.yaml", yaml.safe_dump(self.hyp, sort_keys=False))
            write_text(save_dir / "opt.yaml", yaml.safe_dump(_plain(vars(opt)), sort_keys=False))

        optimizer = self._optimizer(model, accumulate, batch)
        epochs, lrf = opt.epochs, self.hyp.get("lrf", 0.01)
        if opt.cos_lr:
            from ultralytics.utils.torch_utils import one_cycle

            lf = one_cycle(1, lrf, max(epochs, 1))
        else:
            def lf(x):
                return (1 - x / max(epochs, 1)) * (1.0 - lrf) + lrf
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
        from ultralytics.utils.torch_utils import ModelEMA

        ema = ModelEMA(model) if self.main else None
        amp = bool(opt.amp) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.distiller = None
        if opt.teacher or self._teacher_model is not None:
            teacher = self._teacher_model or load_model(opt.teacher, trust=opt.trust_checkpoint)
            teacher = copy.deepcopy(teacher).float().to(device)
            gains = getattr(self.criterion, "h", None) or {}
            self.distiller = OutputDistiller(teacher, model, gains, opt.dist)
            LOGGER.info(f"distilling from {opt.teacher or 'the unpruned model'} (weight {opt.dist})")

        start_epoch, best_fitness, best_epoch, rows = 0, 0.0, -1, []
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler") and amp:
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
                ema.updates = int(ckpt.get("updates", 0))
            start_epoch = int(ckpt["epoch"]) + 1
            best_fitness, best_epoch = float(ckpt.get("best_fitness", 0.0)), int(ckpt.get("best_epoch", -1))
            rows = _read_csv(save_dir / "results.csv")[:start_epoch]
            if ckpt.get("rng") is not None:
                torch.set_rng_state(ckpt["rng"]["torch"])
                random.setstate(_as_random_state(ckpt["rng"]["python"]))
            LOGGER.info(f"resuming {save_dir} from epoch {start_epoch + 1} of {epochs}")
            if start_epoch >= epochs:
                raise UsageError(f"--resume: {opt.resume} already finished all {epochs} epochs")
        del ckpt
        scheduler.last_epoch = start_epoch - 1

        net = model
        if self.world > 1:
            if opt.sync_bn and device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.net, self.ema, self.optimizer = net, ema, optimizer
        # YOLOv5 warms up >= 100 iterations; a fine-tune recipe lowers that floor (hyp warmup_min_iters)
        nw = max(round(self.hyp.get("warmup_epochs", 3.0) * nb), int(self.hyp.get("warmup_min_iters", 100))) \
            if self.hyp.get("warmup_epochs", 3.0) > 0 else -1
        last_opt_step = -1
        params = [p for p in model.parameters() if p.requires_grad]
        best_model, best_metrics = None, {}
        self._run_callbacks("on_train_start")
        if self.main:
            LOGGER.info(f"image sizes {imgsz} train, {imgsz} val; {self.world} process(es); batch {opt.batch_size} "
                        f"(accumulate {accumulate}); AMP {'on' if amp else 'off'}; logging results to {save_dir}\n"
                        f"starting training for {epochs} epochs...")
        from ultralytics.utils import TQDM

        ran = 0  # epochs this call trained (0 for --epochs 0, or a finished run resumed)
        for epoch in range(start_epoch, epochs):
            self.epoch = epoch
            ran += 1
            net.train()
            if opt.close_mosaic and epoch == epochs - opt.close_mosaic:
                LOGGER.info("closing mosaic/mixup for the last epochs")
                self.train_set.close_mosaic(hyp=copy.copy(self.data_cfg))
                loader.reset()
            if self.rank != -1 and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            self._run_callbacks("on_train_epoch_start")
            mloss = torch.zeros(len(self.loss_names))
            head = ("%11s" * (4 + len(self.loss_names))) % ("Epoch", "GPU_mem", *(f"{n}_loss" for n in self.loss_names),
                                                           "Instances", "Size")
            if self.main:
                LOGGER.info(head)
            pbar = TQDM(enumerate(loader), total=nb, disable=not (self.main and opt.progress))
            optimizer.zero_grad()
            for i, batch_data in pbar:
                ni = i + nb * epoch
                imgs = batch_data["img"].to(device, non_blocking=True).float() / 255
                self.batch_images = imgs.shape[0]
                self._run_callbacks("on_train_batch_start")
                if ni <= nw:
                    xi = [0, nw]
                    accumulate = max(1, int(np.interp(ni, xi, [1, opt.nbs / opt.batch_size]).round()))
                    for j, g in enumerate(optimizer.param_groups):
                        start = self.hyp.get("warmup_bias_lr", 0.1) if j == 0 else 0.0
                        g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * lf(epoch)]))
                        if "momentum" in g:
                            g["momentum"] = float(np.interp(ni, xi, [self.hyp.get("warmup_momentum", 0.8),
                                                                     self.hyp.get("momentum", 0.937)]))
                with torch.autocast(device.type, enabled=amp):
                    preds = net(imgs)
                    loss, items = self.criterion(preds, batch_data)
                    if self.distiller is not None:
                        loss = loss + self.distiller(preds, imgs)
                    if self.world > 1:
                        loss = loss * self.world  # DDP averages gradients over processes
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, batch {i}; "
                                             "lower lr0 in the hyp or check the labels")
                scaler.scale(loss).backward()
                self._run_callbacks("on_after_backward")
                if ni - last_opt_step >= accumulate:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, max_norm=10.0)
                    if self.sparsity is not None:
                        self.sparsity.apply()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
                    if ema is not None:
                        ema.update(model)
                    last_opt_step = ni
                    self._run_callbacks("on_optimizer_step")
                    if self.stop:  # a policy (e.g. Group Fisher) finished its pruning phase
                        break
                mloss = (mloss * i + items.float().cpu()) / (i + 1)
                if self.main:
                    mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if device.type == "cuda" else "0G"
                    pbar.set_description(("%11s" * 2 + "%11.4g" * (len(self.loss_names) + 2)) % (
                        f"{epoch + 1}/{epochs}", mem, *mloss.tolist(), batch_data["cls"].shape[0], imgs.shape[-1]))
            lrs = [g["lr"] for g in optimizer.param_groups]
            scheduler.step()
            self._run_callbacks("on_train_epoch_end")

            if self.main:
                final = epoch + 1 == epochs
                res = None
                if not opt.noval or final:
                    res = self.validate(ema.ema, val_loader)
                fitness = res.fitness if res is not None else 0.0
                improved = res is not None and (fitness > best_fitness or best_epoch < 0)
                if improved:
                    best_fitness, best_epoch = fitness, epoch
                    best_metrics = {**res.to_dict(), "epoch": epoch}
                rows.append(self._row(epoch, mloss, res, lrs))
                _write_csv(rows, save_dir / "results.csv")
                self.metrics = res
                if not opt.nosave or final:
                    state = self._checkpoint(model, ema, optimizer, scaler, epoch, best_fitness, best_epoch, res)
                    if improved:  # before last.pt: a kill in between never leaves a best.pt older than last.pt says
                        save_checkpoint(state, wdir / "best.pt")
                    save_checkpoint(state, wdir / "last.pt")
                    if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
                        save_checkpoint(state, wdir / f"epoch{epoch + 1}.pt")
                if improved:
                    best_model = copy.deepcopy(ema.ema)
                if self.sparsity is not None:
                    self._gamma_history.append(self.sparsity.gammas())
                self._run_callbacks("on_fit_epoch_end")
                if res is not None and epoch - best_epoch >= opt.patience:
                    LOGGER.info(f"stopping early: no improvement in the last {opt.patience} epochs "
                                f"(best epoch {best_epoch + 1})")
                    self.stop = True
            if self.world > 1:
                box = [self.stop]
                dist.broadcast_object_list(box, src=0)
                self.stop = box[0]
            if self.stop:
                break

        result = TrainResult(save_dir=save_dir, best=None, last=None, model=None, metrics=best_metrics,
                             epochs=ran, seconds=time.time() - t_start)
        if self.main:
            last, best = wdir / "last.pt", wdir / "best.pt"
            for f in (last, best):
                if f.exists():
                    strip_checkpoint(f)
            result.last = last if last.exists() else None
            result.best = best if best.exists() else result.last
            result.model = (best_model or ema.ema).float().eval()
            _plot_results(rows, save_dir / "results.png")
            if self.sparsity is not None:
                _plot_gammas(self._gamma_history, save_dir / "gamma_hist.png")
            if best_metrics:
                LOGGER.info(f"best epoch {best_epoch + 1}: fitness {best_fitness:.4f}, mAP50 {best_metrics['map50']:.3f}"
                            f", mAP50-95 {best_metrics['map50_95']:.3f}")
            LOGGER.info(f"{ran} epochs completed in {(time.time() - t_start) / 3600:.3f} "
                        f"hours.\nResults saved to {save_dir}")
        self._run_callbacks("on_train_end")
        if getattr(self, "_owns_group", False) and dist.is_initialized():
            dist.destroy_process_group()
        return result

    def validate(self, model: nn.Module, loader) -> ValResult:
        m = fuse_model(copy.deepcopy(model).float().to(self.device))
        res, _ = validate(m, loader, self.data["names"], device=self.device, single_cls=self.opt.single_cls,
                          progress=self.opt.progress, criterion=self.criterion)
        LOGGER.info(format_table(res))
        return res

    def _row(self, epoch: int, mloss: torch.Tensor, res: ValResult | None, lrs: list) -> dict:
        row = {"epoch": epoch}
        row.update({f"train/{n}_loss": round(float(v), 5) for n, v in zip(self.loss_names, mloss)})
        vals = (res.precision, res.recall, res.map50, res.map50_95) if res is not None else ("",) * 4
        row.update({k: (round(v, 5) if v != "" else v) for k, v in zip(METRIC_KEYS, vals)})
        losses = res.losses if res is not None else {}
        row.update({f"val/{n}_loss": round(losses[n], 5) if n in losses else "" for n in self.loss_names})
        row.update({f"lr/pg{j}": round(float(lr), 6) for j, lr in enumerate(lrs)})
        return row

    def _checkpoint(self, model, ema, optimizer, scaler, epoch, best_fitness, best_epoch, res) -> dict:
        return {
            "epoch": epoch,
            "best_fitness": best_fitness,
            "best_epoch": best_epoch,
            "model": _storable(model),
            "ema": _storable(ema.ema),
            "updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "opt": _plain(vars(self.opt)),
            "hyp": _plain(self.hyp),
            "metrics": _plain(res.to_dict()) if res is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": _plain(random.getstate())},
            "date": datetime.datetime.now().isoformat(),
        }


def _storable(model: nn.Module) -> nn.Module:
    """A float32 copy fit for the allowlisted loader (ultralytics keeps its args as a dict in checkpoints)."""
    from ultralytics.utils.torch_utils import unwrap_model

    m = copy.deepcopy(unwrap_model(model)).float()
    if hasattr(m, "args") and not isinstance(m.args, dict):
        m.args = dict(vars(m.args))
    if hasattr(m, "criterion"):
        m.criterion = None
    return m


def strip_checkpoint(path: Path) -> None:
    """Finished runs keep only the EMA model in FP16 (as YOLOv5 does): a small file for val/export/compress."""
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is None:
        return
    ckpt["model"] = (ckpt.get("ema") or ckpt["model"]).half()
    for k in ("ema", "optimizer", "scaler", "rng"):
        ckpt[k] = None
    ckpt["updates"] = None
    save_checkpoint(ckpt, path)


def _plain(x):
    """Options/state reduced to plain Python values (the allowlisted loader refuses arbitrary classes)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x if not isinstance(x, str) else str(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)  # numpy scalars would pickle as numpy globals
    return str(x)


def _as_random_state(s):
    return (s[0], tuple(s[1]), s[2])


def _write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    buf = io.StringIO()
    # the union of the rows' columns: a run resumed from an older results.csv gains the newer columns
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _plot_results(rows: list[dict], path: Path) -> None:
    """results.png as YOLOv5 draws it: training losses and precision/recall on top, validation losses and mAPs
    below, one panel per column of results.csv against the epoch; columns without values are left out."""
    fig = results_figure(rows)
    if fig is not None:
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=150)
        plt.close(fig)


def results_figure(rows: list[dict]):
    """The figure _plot_results saves (None without rows)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = list(dict.fromkeys(k for r in rows for k in r))
    top = [k for k in cols if k.startswith("train/")] + [k for k in METRIC_KEYS[:2] if k in cols]
    bottom = [k for k in cols if k.startswith("val/")] + [k for k in METRIC_KEYS[2:] if k in cols]
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def points(k):
        return [(e, float(r[k])) for e, r in zip(epochs, rows) if r.get(k) not in ("", None)]

    top, bottom = [k for k in top if points(k)], [k for k in bottom if points(k)]
    ncol = max(len(top), len(bottom), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(2.6 * ncol, 5), squeeze=False, tight_layout=True)
    for r, keys in enumerate((top, bottom)):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(keys):
                fig.delaxes(ax)
                continue
            x, y = zip(*points(keys[c]))
            ax.plot(x, y, marker=".", linewidth=1.5)
            ax.set_title(keys[c], fontsize=10)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    return fig


def _plot_gammas(history: list[np.ndarray], path: Path) -> None:
    """Histogram of BN |gamma| per epoch: sparsity training should push a mass of them towards 0."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), tight_layout=True)
    hi = max(float(np.percentile(h, 99.5)) for h in history if h.size) if any(h.size for h in history) else 1.0
    bins = np.linspace(0, hi, 60)
    cmap = plt.get_cmap("viridis")
    for e, h in enumerate(history):
        counts, edges = np.histogram(h, bins=bins)
        ax.plot((edges[:-1] + edges[1:]) / 2, counts, color=cmap(e / max(len(history) - 1, 1)), label=f"epoch {e + 1}")
    ax.set_xlabel("|gamma|")
    ax.set_ylabel("BN channels")
    ax.set_title("BatchNorm |gamma| per epoch (sparsity training moves mass towards 0)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def train(model: nn.Module | None = None, callbacks: dict | None = None, teacher_model: nn.Module | None = None,
          **kw) -> TrainResult:
    """Python API: `train(model=pruned, data='coco128.yaml', epochs=5, hyp='finetune', save_dir=...)`;
    `teacher_model` distils from a model object (compress.py --distill: the unpruned model)."""
    if model is not None and not kw.get("weights") and not kw.get("cfg"):
        kw["weights"] = "<model object>"
    return Trainer(train_options(**kw), model=model, callbacks=callbacks, teacher_model=teacher_model).train()
