# AGPL-3.0 License
"""The offline demo's base model: `compress.py` without --weights trains a small model on --data (the built-in
shapes data by default) once and caches it for later runs."""

from __future__ import annotations

from pathlib import Path

from data.shapes import shapes_root
from engine.trainer import train
from utils import distributed as ddp
from utils.files import copy_file
from utils.general import LOGGER


def base_model_path(opt, data: dict) -> Path:
    """Where the demo's base model for these options is cached."""
    tag = (f"{Path(data['yaml_file']).parent.name}-{opt.base_cfg.replace('.yaml', '')}-{opt.imgsz}-{opt.base_epochs}"
           f"-w{opt.base_workers}")
    return shapes_root() / "base" / f"{tag}.pt"


def ensure_base_model(opt, data: dict) -> Path:
    """No --weights: a small base model (--base-cfg, --base-epochs, --base-hyp, --base-optimizer, --base-workers)
    trained from scratch on --data once (all processes of a DDP run agree), cached at `base_model_path` for reuse.

    Returns:
        the base checkpoint's path."""
    path = base_model_path(opt, data)
    tag = path.stem
    if ddp.broadcast(path.exists()):
        LOGGER.info(f"base model: {path} (cached)")
        return path
    LOGGER.info(f"no --weights: training a base {opt.base_cfg} on {data['yaml_file']} for {opt.base_epochs} epochs "
                f"(cached at {path} for later runs)")
    res = train(cfg=opt.base_cfg, data=opt.data, epochs=opt.base_epochs, imgsz=opt.imgsz, batch_size=opt.batch_size,
                device=opt.device, workers=opt.base_workers, hyp=opt.base_hyp, optimizer=opt.base_optimizer,
                seed=opt.seed, save_dir=str(path.parent / f".{tag}-run"), exist_ok=True)
    if ddp.is_main():
        copy_file(res.best, path)
    ddp.barrier()
    return path
