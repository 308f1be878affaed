# AGPL-3.0 License
"""Structured channel pruning engine, layered:

graph (prune.graph: which channels are coupled, found by tracing one forward)
  -> groups (prune.groups: channels pruned together, with params/FLOPs/memory per channel)
  -> importance (prune.importance: criteria scoring each channel of a group)
  -> policies (prune.plans, ...: how many channels of which groups to remove)
  -> masks (prune.masks: reversible trials) and surgery (prune.surgery: physical removal)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prune.groups import Group, GroupSet
from prune.masks import ChannelMasks
from prune.surgery import apply_removal, channel_table, estimate_flops
from prune.verify import verify_groups


def build_groups(model: nn.Module, imgsz: int = 64, ignore: list[str] | None = None, verify: bool = True) -> GroupSet:
    """Trace `model` on a blank image of imgsz (a multiple of its max stride) and build its groups; verify: cut one
    channel of every group on a copy and make unprunable the groups whose cut breaks the model (prune.verify)."""
    stride = int(max(getattr(model, "stride", torch.tensor([32])).max(), 32))
    s = max(stride, (imgsz + stride - 1) // stride * stride)
    p = next(model.parameters())
    groups = GroupSet(model, torch.zeros(1, 3, s, s, device=p.device, dtype=p.dtype), ignore=ignore)
    if verify:  # on a textured image (a blank one makes all positions alike), at most 4 strides wide: cheap
        v = min(s, 4 * stride)
        x = torch.rand(1, 3, v, v, generator=torch.Generator().manual_seed(0)).to(device=p.device, dtype=p.dtype)
        verify_groups(model, groups, x)
    return groups


__all__ = ["ChannelMasks", "Group", "GroupSet", "apply_removal", "build_groups", "channel_table", "estimate_flops"]
