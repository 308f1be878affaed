# AGPL-3.0 License
"""A run-time check of the graph: cut one channel of every prunable group on a copy of the model and compare the
copy's output with the masked model's on the traced input. A dependency the tracer missed (a block that reshapes
to a channel count it read from `x.shape`, a width kept in an attribute, ...) shows as an exception or a
different output; the groups responsible are found by bisection and made unprunable (fail closed), with the
reason in the graph's log. One copy, one cut and two forwards when everything agrees.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from prune.groups import GroupSet
from prune.masks import ChannelMasks
from prune.surgery import apply_removal


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of a model's output, in order (a segmentation head returns its masks' protos beside the boxes)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


@torch.no_grad()
def _agrees(model: nn.Module, groups: GroupSet, example: torch.Tensor, gids: list[int], tol: float) -> str:
    """'' when cutting the last channel of each group in gids equals masking it, else what went wrong."""
    plan = {gid: [len(groups.groups[gid]) - 1] for gid in gids}
    with ChannelMasks(model, groups) as masks:
        for gid, pos in plan.items():
            masks.set_removed(gid, pos)
        refs = _tensors(model(example))
    try:
        cuts = _tensors(apply_removal(copy.deepcopy(model), groups, plan).eval()(example))
    except Exception as e:  # any failure of the cut model is what this check looks for
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    shapes = [tuple(t.shape) for t in cuts], [tuple(t.shape) for t in refs]
    if not refs or shapes[0] != shapes[1]:
        return f"output shapes {shapes[0]} != {shapes[1]}"
    for cut, ref in zip(cuts, refs):  # every output: boxes, and e.g. a segmentation head's mask protos
        err = float((cut.float() - ref.float()).abs().max()) / max(1.0, float(ref.float().abs().max()))
        if err > tol:
            return f"cut model differs from the masked one (max rel. error {err:.1e})"
    return ""


def verify_groups(model: nn.Module, groups: GroupSet, example: torch.Tensor, tol: float | None = None) -> list[int]:
    """Make unprunable every group whose cut breaks the model or disagrees with its mask; returns their ids.

    example: an input (batch, 3, H, W), pixels in [0, 1]; tol: max error relative to the output scale (default
    1e-3 in float32, 3e-2 in half precision). Cost: one deep copy, one surgery and two forwards at that size when
    all groups pass; bisection (two more per halving) only around failures.
    """
    if tol is None:
        tol = 1e-3 if example.dtype == torch.float32 else 3e-2
    was_training = model.training
    model.eval()
    bad: list[tuple[int, str]] = []

    def search(gids: list[int], why: str) -> None:
        if len(gids) == 1:
            bad.append((gids[0], why))
            return
        halves = [gids[: len(gids) // 2], gids[len(gids) // 2:]]
        reasons = [_agrees(model, groups, example, h, tol) for h in halves]
        if not any(reasons):  # only the combination fails: keep all of them
            bad.extend((g, why) for g in gids)
        for h, r in zip(halves, reasons):
            if r:
                search(h, r)

    try:
        candidates = [g.id for g in groups.prunable]
        why = _agrees(model, groups, example, candidates, tol) if candidates else ""
        if why:
            search(candidates, why)
    finally:
        model.train(was_training)
    for gid, why in bad:
        g = groups.groups[gid]
        g.prunable, g.reason = False, f"cutting it breaks the model ({why})"
        groups.graph.log.append(f"unprunable: group {gid} ({', '.join(g.producers)}): cutting a channel {why}")
    return [gid for gid, _ in bad]
