# AGPL-3.0 License
"""What every pruning method takes and returns.

A method is a function `plan(model, groups, ctx) -> Plan` registered in prune/methods/__init__.py. It decides
which channels go; the compressor (engine/compressor.py) then cuts them, fine-tunes and validates. A method
returns everything it measured in `Plan.info` and never writes onto the run's options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from utils.general import LOGGER


@dataclass
class Plan:
    """removed: group id -> channel positions to remove (prune.surgery.apply_removal's input).
    info: what the method measured, by key (all optional): oracle_seconds (float, the oracle's wall time),
    image_forwards (int), forward_equivalents (int, full-model forwards by FLOPs), pagcp (dict: target, units,
    loss_growth, guard_stopped, passes), fisher_epochs (float, epochs Group Fisher trained)."""

    removed: dict[int, list[int]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanContext:
    """Everything a method needs besides the model and its groups, built once per round by the compressor.

    settings: the run's options (a copy: a method reads them, never writes them); data: the dataset dict
    (data.datasets.check_dataset); run_dir: the round's folder (the method's own files go there);
    round_index: the compressor's round (0, 1, ...); round_target: this round's FLOPs share of
    its input (None: no FLOPs target); resume: the run continues an interrupted one; is_main: this process
    writes files (rank 0 of a DDP run); train(model, callbacks, **overrides): the run's training loop with its
    fine-tuning options (Group Fisher trains inside it); log: one line of progress."""

    settings: Any
    data: dict
    device: torch.device
    run_dir: Path
    round_index: int = 0
    round_target: float | None = None
    resume: bool = False
    is_main: bool = True
    train: Callable[..., Any] | None = None
    log: Callable[[str], None] = LOGGER.info
