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
import datetime
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
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_dataloader
from ultralytics.utils import TQDM
from ultralytics.utils.torch_utils import ModelEMA, torch_distributed_zero_first

from data.datasets import build_train_dataset, build_val_loader, check_dataset, checked_dataset
from data.tasks import for_task
from engine.distill import Distiller
from engine.optim import StepSchedule, build_optimizer, freeze_layers, lr_factor
from engine.train_config import (check_options, load_hyp, resolve_base_lr0, resume_options, seed_everything,
                                 train_options)
from engine.train_checks import TrainingWatch
from engine.train_plots import plot_gammas, plot_results
from engine.train_state import as_random_state, plain, read_csv, results_row, storable, strip_checkpoint, write_csv
from engine.validation import ValResult, format_table, validate
from models.loader import (check_supported, class_rows_kept, detection_head, finalize, fuse_model, load_model,
                           model_task, reset_classes)
from models.loss import build_criterion
from prune.methods.slim import SparsityPenalty
from prune.widths import is_yaml_pruned, mark_yaml_pruned
from utils.checkpoint import save_checkpoint
from utils.distributed import setup as setup_distributed
from utils.files import write_text
from utils.general import LOGGER, UsageError, check_imgsz, increment_path

CALLBACK_EVENTS = ("on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_after_backward",
                   "on_optimizer_step",
                   "on_train_epoch_end", "on_fit_epoch_end", "on_train_end")
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
                "fliplr", "mosaic", "mixup", "copy_paste")


@dataclass
class TrainResult:
    save_dir: Path
    best: Path | None
    last: Path | None
    model: nn.Module  # the EMA model of the best epoch (or the last one when nothing was validated)
    metrics: dict = field(default_factory=dict)  # validation of the best epoch
    epochs: int = 0
    seconds: float = 0.0
    warnings: list = field(default_factory=list)  # the run's WARNING lines (engine.train_checks), also warnings.txt
    distill: dict | None = None  # distillation's mode and cost (engine.distill.Distiller.summary), also distill.json


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
        self.watch = TrainingWatch()

    # ------------------------------------------------------------------ setup
    def _run_callbacks(self, event: str) -> None:
        for cb in self.callbacks[event]:
            cb(self)

    def _setup_device(self) -> torch.device:
        # a process group compress.py opened for its whole run outlives this training (its next round needs it)
        self._owns_group = self.world > 1 and not dist.is_initialized()
        return setup_distributed(self.opt.device)

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
            return finalize(ckpt["model"]).float()
        if self._given_model is not None:
            model = self._given_model
            check_supported(detection_head(model), type(model).__name__)  # as load_model does for files
        elif opt.weights and Path(str(opt.weights)).suffix not in (".yaml", ".yml"):
            model = load_model(opt.weights, trust=opt.trust_checkpoint)
            if is_yaml_pruned(getattr(model, "yaml", None)):  # an older mark gets today's (refused by YOLOv5/v7 too)
                mark_yaml_pruned(model)
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

    def _train_loader(self, data: dict, batch: int, stride: int):
        aug = {k: self.hyp[k] for k in AUGMENT_KEYS if k in self.hyp}
        self.data_cfg = get_cfg(overrides={"imgsz": self.opt.imgsz, "task": data.get("task", "detect"),
                                           "single_cls": self.opt.single_cls,
                                           "cache": False, "fraction": 1.0, "rect": False, **aug})
        with torch_distributed_zero_first(self.local_rank):  # rank 0 writes the label cache first
            dataset = checked_dataset(lambda: build_train_dataset(self.data_cfg, data["train"], batch,
                                                                  {**data, "channels": 3}, stride=stride),
                                      f"{data['yaml_file']} 'train'")
        workers = min(self.opt.workers, os.cpu_count() or 1)
        # ultralytics seeds the loader's generator (shuffling, its workers' augmentation) from torch's seed
        loader = build_dataloader(dataset, batch, workers, shuffle=True, rank=self.rank, device=self.device)
        return dataset, loader

    def _setup(self) -> dict | None:
        """Options, device, seeds, data, model, loss, loaders, run folder, optimizer, schedule, EMA and teacher;
        returns the checkpoint being resumed (None for a new run)."""
        opt, ckpt = self.opt, None
        if opt.resume:
            opt, ckpt = resume_options(opt)
            self.opt = opt
        check_options(opt)
        self.device = device = self._setup_device()
        self.seed = int(opt.seed) + max(self.rank, 0)
        seed_everything(self.seed)
        self.hyp = load_hyp(opt.hyp)
        if opt.label_smoothing:
            self.hyp["label_smoothing"] = opt.label_smoothing
        with torch_distributed_zero_first(self.local_rank):
            data = check_dataset(opt.data, splits=("train", "val"))
        self.data = data
        model = self._build_model(data, ckpt).to(device)
        self.data = data = for_task(data, model_task(model))  # the loaders read the task's labels (masks, ...)
        freeze_layers(model, opt.freeze)
        stride = int(max(float(model.stride.max()), 32))
        opt.imgsz = imgsz = check_imgsz(opt.imgsz, stride)  # the stride is known: one warning when it changes
        if opt.batch_size % self.world:
            raise UsageError(f"--batch-size {opt.batch_size} must be a multiple of the {self.world} processes")
        batch = opt.batch_size // self.world
        self.accumulate = max(round(opt.nbs / opt.batch_size), 1)
        self.model = model
        self.criterion = build_criterion(model, self.hyp, imgsz)
        self.loss_names = tuple(self.criterion.names)
        self.sparsity = None
        if opt.sparsity:  # before the run folder exists: a bad --sparsity-ignore pattern writes nothing
            self.sparsity = SparsityPenalty(model, opt.sparsity, opt.sparsity_ignore,
                                            batch * self.accumulate * self.world, opt.nbs)
            if self.sparsity.ignored and self.main:
                LOGGER.info(f"--sparsity-ignore {' '.join(opt.sparsity_ignore)}: {len(self.sparsity.ignored)} "
                            f"BatchNorm layer(s) not penalized: {', '.join(self.sparsity.ignored)}")
        self.distiller = None
        if opt.teacher or self._teacher_model is not None:  # before the run folder: a bad teacher writes nothing
            teacher = self._teacher_model or load_model(opt.teacher, trust=opt.trust_checkpoint)
            self.distiller = Distiller(copy.deepcopy(teacher).float().to(device), model, opt.distill_mode, opt.dist,
                                       opt.dist_feat, getattr(self.criterion, "h", None) or {}, imgsz)
            for event, cbs in self.distiller.callbacks().items():
                self.callbacks[event] += cbs
            LOGGER.info(f"distilling ({opt.distill_mode}) from {opt.teacher or 'the unpruned model'} "
                        f"(output weight {opt.dist}, feature weight {opt.dist_feat})")

        self.train_set, self.loader = self._train_loader(data, batch, stride)
        self.nb = len(self.loader)  # batches per epoch (callbacks read it)
        self.val_loader = build_val_loader(data, "val", imgsz, batch * 2, stride, opt.workers, opt.single_cls) \
            if self.main else None
        # the inputs (weights, data, labels) are usable: only now is the run folder created
        self.save_dir = save_dir = self._save_dir()
        self.wdir = save_dir / "weights"
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            write_text(save_dir / "hyp.yaml", yaml.safe_dump(self.hyp, sort_keys=False))
            write_text(save_dir / "opt.yaml", yaml.safe_dump(plain(vars(opt)), sort_keys=False))

        self.batch = batch
        self.lf = lr_factor(opt.epochs, self.hyp.get("lrf", 0.01), opt.cos_lr)
        self._build_optimizer()
        self.total_steps = opt.epochs * self.nb // self.accumulate  # optimizer steps of the whole run
        self.schedule = None
        if opt.schedule == "steps":  # lr, warmup, decay and EMA stated in optimizer steps (engine/optim.py)
            self.schedule = StepSchedule.create(self.total_steps, self.hyp, opt, resolve_base_lr0(opt))
            if self.main:
                LOGGER.info(self.schedule.line())
        ema_kw = dict(decay=self.schedule.ema_decay, tau=self.schedule.ema_tau) if self.schedule else {}
        self.ema = ModelEMA(model, **ema_kw) if self.main else None
        self.amp = bool(opt.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        return ckpt

    def _build_optimizer(self) -> None:
        """The optimizer and the per-epoch scheduler for the current model (again after a structural cut)."""
        self.optimizer = build_optimizer(self.model, self.hyp, self.opt.optimizer, self.opt.nbs, self.accumulate,
                                         self.batch)
        if self.distiller is not None:  # the projectors train with the student (before the scheduler)
            self.distiller.add_param_group(self.optimizer, self.hyp)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.scheduler.last_epoch = self.epoch - 1 if self.epoch else -1

    def apply_cut(self, cut) -> None:
        """Prune the training model during training: `cut(module)` removes channels in place and is applied to the
        training model and (rank 0) the EMA alike; the optimizer, gradient clipping's parameters and the DDP wrapper
        are then rebuilt for the new shapes (the optimizer's momentum restarts)."""
        model = self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.model
        cut(model)
        if self.ema is not None:
            cut(self.ema.ema)
        self.model = model
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._build_optimizer()
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.net = self._wrap(model)
        model.zero_grad(set_to_none=True)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: `model` itself, or its DistributedDataParallel wrapper with several processes."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _restore(self, ckpt: dict | None) -> None:
        """Start-of-run state: epoch, best fitness, results rows and RNG states of a resumed run (or a new one's)."""
        self.start_epoch, self.best_fitness, self.best_epoch, self.rows = 0, 0.0, -1, []
        self.opt_steps, self.extra_state = 0, {}  # optimizer steps taken; state of callbacks (resumed with the run)
        self.resumed_state = (ckpt or {}).get("extra") or {}
        if ckpt is not None:
            self.opt_steps = int(ckpt.get("opt_steps", 0))
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler") and self.amp:
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt.get("ema") is not None:
                self.ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
                self.ema.updates = int(ckpt.get("updates", 0))
            self.start_epoch = int(ckpt["epoch"]) + 1
            self.best_fitness, self.best_epoch = float(ckpt.get("best_fitness", 0.0)), int(ckpt.get("best_epoch", -1))
            self.rows = read_csv(self.save_dir / "results.csv")[:self.start_epoch]
            if ckpt.get("rng") is not None:
                torch.set_rng_state(ckpt["rng"]["torch"])
                random.setstate(as_random_state(ckpt["rng"]["python"]))
            LOGGER.info(f"resuming {self.save_dir} from epoch {self.start_epoch + 1} of {self.opt.epochs}")
            if self.start_epoch >= self.opt.epochs:
                raise UsageError(f"--resume: {self.opt.resume} already finished all {self.opt.epochs} epochs")
        self.scheduler.last_epoch = self.start_epoch - 1
        if self.world > 1 and self.opt.sync_bn and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = self._wrap(self.model)
        # YOLOv5 warms up >= 100 iterations; a fine-tune recipe lowers that floor (hyp warmup_min_iters)
        self.nw = max(round(self.hyp.get("warmup_epochs", 3.0) * self.nb), int(self.hyp.get("warmup_min_iters", 100))) \
            if self.hyp.get("warmup_epochs", 3.0) > 0 and self.schedule is None else -1
        self.last_opt_step = -1
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.best_model, self.best_metrics = None, {}

    # ------------------------------------------------------------------ main loop
    def train(self) -> TrainResult:
        t_start = time.time()
        ckpt = self._setup()
        self._restore(ckpt)
        del ckpt
        self._run_callbacks("on_train_start")
        opt = self.opt
        if self.main:
            LOGGER.info(f"image sizes {opt.imgsz} train, {opt.imgsz} val; {self.world} process(es); batch "
                        f"{opt.batch_size} (accumulate {self.accumulate}); AMP {'on' if self.amp else 'off'}; logging "
                        f"results to {self.save_dir}\nstarting training for {opt.epochs} epochs...")
        ran = 0  # epochs this call trained (0 for --epochs 0, or a finished run resumed)
        for epoch in range(self.start_epoch, opt.epochs):
            self.epoch = epoch
            ran += 1
            mloss, lrs = self._train_epoch(epoch)
            if self.main:
                self._end_epoch(epoch, mloss, lrs)
            if self.world > 1:
                box = [self.stop]
                dist.broadcast_object_list(box, src=0)
                self.stop = box[0]
            if self.stop:
                break
        return self._finish(ran, t_start)

    def _train_epoch(self, epoch: int) -> tuple[torch.Tensor, list[float]]:
        """One pass over the training set; returns (mean loss items, the lr of each parameter group)."""
        opt, loader, device = self.opt, self.loader, self.device
        epochs, nb = opt.epochs, self.nb
        self.net.train()
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
        self.optimizer.zero_grad()
        for i, batch_data in pbar:
            ni = i + nb * epoch
            imgs = batch_data["img"].to(device, non_blocking=True).float() / 255
            self.batch_images = imgs.shape[0]
            self._run_callbacks("on_train_batch_start")
            if ni <= self.nw:
                self._warmup(ni, epoch)
            with torch.autocast(device.type, enabled=self.amp):
                net = self.net  # rebuilt by apply_cut when a callback prunes during training
                preds = self.distiller.student_forward(net, imgs) if self.distiller is not None else net(imgs)
                loss, items = self.criterion(preds, batch_data)
                if self.distiller is not None:
                    loss = loss + self.distiller(preds, imgs)
                if self.world > 1:
                    loss = loss * self.world  # DDP averages gradients over processes
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, batch {i}; "
                                         "lower lr0 in the hyp or check the labels")
            self.scaler.scale(loss).backward()
            self._run_callbacks("on_after_backward")
            if ni - self.last_opt_step >= self.accumulate:
                if self.schedule is not None:
                    self.schedule.apply(self.optimizer, self.opt_steps)
                self._step(ni)
                if self.stop:  # a policy (e.g. Group Fisher) finished its pruning phase
                    break
            mloss = (mloss * i + items.float().cpu()) / (i + 1)
            if self.main:
                mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if device.type == "cuda" else "0G"
                pbar.set_description(("%11s" * 2 + "%11.4g" * (len(self.loss_names) + 2)) % (
                    f"{epoch + 1}/{epochs}", mem, *mloss.tolist(), batch_data["cls"].shape[0], imgs.shape[-1]))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if self.schedule is None:
            self.scheduler.step()
        self._run_callbacks("on_train_epoch_end")
        return mloss, lrs

    def _warmup(self, ni: int, epoch: int) -> None:
        """Warmup iteration ni: accumulation rises to nbs / batch, biases' lr falls from warmup_bias_lr and the
        other groups' rises from 0, momentum rises from warmup_momentum (YOLOv5)."""
        xi = [0, self.nw]
        self.accumulate = max(1, int(np.interp(ni, xi, [1, self.opt.nbs / self.opt.batch_size]).round()))
        for j, g in enumerate(self.optimizer.param_groups):
            start = self.hyp.get("warmup_bias_lr", 0.1) if j == 0 else 0.0
            g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * self.lf(epoch)]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [self.hyp.get("warmup_momentum", 0.8),
                                                         self.hyp.get("momentum", 0.937)]))

    def _step(self, ni: int) -> None:
        """One optimizer step: clipped gradients, the sparsity subgradient, EMA update, callbacks."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, max_norm=10.0)
        if self.sparsity is not None:
            self.watch.sparsity_step(self.sparsity, self.opt.sparsity)
            self.sparsity.apply()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        self.last_opt_step = ni
        self.opt_steps += 1
        self._run_callbacks("on_optimizer_step")

    def _end_epoch(self, epoch: int, mloss: torch.Tensor, lrs: list[float]) -> None:
        """Rank 0 after each epoch: validation, results.csv, checkpoints, best model, early stopping."""
        opt, wdir = self.opt, self.wdir
        final = epoch + 1 == opt.epochs
        res = None
        if not opt.noval or final:
            res = self.validate(self.ema.ema, self.val_loader)
        fitness = res.fitness if res is not None else 0.0
        self.watch.epoch(epoch, res.map50_95 if res is not None else None)
        improved = res is not None and (fitness > self.best_fitness or self.best_epoch < 0)
        if improved:
            self.best_fitness, self.best_epoch = fitness, epoch
            self.best_metrics = {**res.to_dict(), "epoch": epoch}
        self.rows.append(results_row(epoch, self.loss_names, mloss, res, lrs))
        write_csv(self.rows, self.save_dir / "results.csv")
        self.metrics = res
        if not opt.nosave or final:
            state = self._checkpoint(epoch, res)
            if improved:  # before last.pt: a kill in between never leaves a best.pt older than last.pt says
                save_checkpoint(state, wdir / "best.pt")
            save_checkpoint(state, wdir / "last.pt")
            if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
                save_checkpoint(state, wdir / f"epoch{epoch + 1}.pt")
        if improved:
            self.best_model = copy.deepcopy(self.ema.ema)
        if self.sparsity is not None:
            self._gamma_history.append(self.sparsity.gammas())
        self._run_callbacks("on_fit_epoch_end")
        if res is not None and epoch - self.best_epoch >= opt.patience:
            LOGGER.info(f"stopping early: no improvement in the last {opt.patience} epochs "
                        f"(best epoch {self.best_epoch + 1})")
            self.stop = True

    def _finish(self, ran: int, t_start: float) -> TrainResult:
        """Stripped checkpoints, figures and the summary line (rank 0); the TrainResult."""
        result = TrainResult(save_dir=self.save_dir, best=None, last=None, model=None, metrics=self.best_metrics,
                             epochs=ran, seconds=time.time() - t_start, warnings=list(self.watch.warnings))
        if self.main:
            last, best = self.wdir / "last.pt", self.wdir / "best.pt"
            for f in (last, best):
                if f.exists():
                    strip_checkpoint(f)
            result.last = last if last.exists() else None
            result.best = best if best.exists() else result.last
            result.model = (self.best_model or self.ema.ema).float().eval()
            plot_results(self.rows, self.save_dir / "results.png")
            if self.watch.warnings:
                write_text(self.save_dir / "warnings.txt", "".join(f"WARNING: {w}\n" for w in self.watch.warnings))
            if self.sparsity is not None:
                plot_gammas(self._gamma_history, self.save_dir / "gamma_hist.png")
            if self.best_metrics:
                LOGGER.info(f"best epoch {self.best_epoch + 1}: fitness {self.best_fitness:.4f}, mAP50 "
                            f"{self.best_metrics['map50']:.3f}, mAP50-95 {self.best_metrics['map50_95']:.3f}")
            if self.distiller is not None:
                result.distill = self.distiller.finish(self.save_dir)
            LOGGER.info(f"{ran} epochs completed in {(time.time() - t_start) / 3600:.3f} "
                        f"hours.\nResults saved to {self.save_dir}")
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

    def _checkpoint(self, epoch: int, res: ValResult | None) -> dict:
        return {
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "model": storable(self.model),
            "ema": storable(self.ema.ema),
            "updates": self.ema.updates,
            "opt_steps": self.opt_steps,
            "extra": plain(self.extra_state) if self.extra_state else None,  # callbacks' state (gradual pruning)
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "opt": plain(vars(self.opt)),
            "hyp": plain(self.hyp),
            "metrics": plain(res.to_dict()) if res is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": plain(random.getstate())},
            "date": datetime.datetime.now().isoformat(),
        }


def train(model: nn.Module | None = None, callbacks: dict | None = None, teacher_model: nn.Module | None = None,
          **kw) -> TrainResult:
    """Python API: `train(model=pruned, data='coco128.yaml', epochs=5, hyp='finetune', save_dir=...)`;
    `teacher_model` distils from a model object (compress.py: the unpruned input model)."""
    if model is not None and not kw.get("weights") and not kw.get("cfg"):
        kw["weights"] = "<model object>"
    return Trainer(train_options(**kw), model=model, callbacks=callbacks, teacher_model=teacher_model).train()
