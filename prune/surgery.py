# AGPL-3.0 License
"""Physical channel removal: slice every member of every removed channel class, then fix module attributes.

Works on any module whose prunable state is plain parameters/buffers found by the graph (Conv2d,
BatchNorm, Linear, implicit parameters, RepConv branches, ...). The detection head's outputs are never
members of a prunable group, so they are never touched.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn

from prune.groups import GroupSet
from prune.widths import mark_yaml_pruned, sync_widths


def keep_count(n: int, n_remove: int, divisor: int = 1, min_keep: int = 1) -> int:
    """Channels to keep after asking to remove n_remove of n: at least min_keep, rounded UP to a
    multiple of divisor (never above n), so a group is never emptied."""
    keep = max(n - int(n_remove), min_keep, 1)
    if divisor > 1:
        keep = min(n, int(math.ceil(keep / divisor) * divisor))
    return keep


def removal_slices(groups: GroupSet, removed: dict[int, list[int]]) -> dict[tuple[str, str, int], set[int]]:
    """(module, tensor name, dim) -> indices to drop."""
    cut: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for gid, positions in removed.items():
        g = groups.groups[gid]
        if not g.prunable and positions:
            raise ValueError(f"group {gid} is not prunable ({g.reason})")
        if len(positions) >= len(g):
            raise ValueError(f"refusing to remove all {len(g)} channels of group {gid} ({', '.join(g.producers)})")
        for pos in positions:
            for m in g.members[pos]:
                cut[(m.module, m.param, m.dim)].add(m.index)
    return cut


@torch.no_grad()
def apply_removal(model: nn.Module, groups: GroupSet, removed: dict[int, list[int]]) -> nn.Module:
    """Remove the given channel positions (group id -> positions) from `model` in place."""
    cut = removal_slices(groups, removed)
    modules = dict(model.named_modules())
    depthwise = {
        n: m.groups for n, m in modules.items()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    }
    for (mname, tname, dim), drop in cut.items():
        mod = modules[mname]
        t = getattr(mod, tname)
        keep = torch.tensor([i for i in range(t.shape[dim]) if i not in drop], device=t.device)
        new = t.index_select(dim, keep).clone()
        if isinstance(t, nn.Parameter):
            setattr(mod, tname, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            mod._buffers[tname] = new
    for name, m in modules.items():
        _fix_attributes(m, was_depthwise=name in depthwise)
    sync_widths(model)  # blocks' own width attributes (C2f.c, Attention.head_dim, RepConv.c1, ...)
    if cut:
        mark_yaml_pruned(model)  # its ultralytics yaml no longer describes it: refuse rebuilds from it
    return model


def _fix_attributes(m: nn.Module, was_depthwise: bool = False) -> None:
    if isinstance(m, nn.ConvTranspose2d):
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, nn.Conv2d):
        if was_depthwise:
            m.groups = m.weight.shape[0]
        m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = (m.running_mean if m.running_mean is not None else m.weight).shape[0]
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    # blocks that keep their own channel counts follow prune.widths' rules (sync_widths)


def channel_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """Remaining channels per layer: the structure a yaml + state dict needs to rebuild the model."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
    return out


def group_sizes(groups: GroupSet, removed: dict[int, list[int]]) -> list[dict]:
    rows = []
    for g in groups.groups:
        if g.prunable:
            r = len(removed.get(g.id, []))
            rows.append({"group": g.id, "producers": g.producers, "before": len(g), "after": len(g) - r})
    return rows


def removed_counts(groups: GroupSet, removed: dict[int, list[int]],
                   kinds: tuple[str, ...] = ("conv", "linear")) -> tuple[dict[str, int], dict[str, int]]:
    """Per traced conv/linear of `kinds` (module name -> count): the output and the input channels a removal takes
    from its weight (defaultdicts: 0 for modules the removal does not touch)."""
    info = groups.graph.conv_info
    r_out: dict[str, int] = defaultdict(int)
    r_in: dict[str, int] = defaultdict(int)
    for (mod, tname, dim), idx in removal_slices(groups, removed).items():
        if tname != "weight" or mod not in info or info[mod].kind not in kinds:
            continue
        if dim == 0:
            r_out[mod] += len(idx)
        else:
            r_in[mod] += len(idx)
    return r_out, r_in


def estimate_flops(groups: GroupSet, removed: dict[int, list[int]]) -> tuple[float, float]:
    """(FLOPs before, FLOPs after) of convs/linears at the traced input size, exactly from the removal."""
    info = groups.graph.conv_info
    r_out, r_in = removed_counts(groups, removed)
    before = after = 0.0
    for mod, ci in info.items():
        if ci.kind in ("conv", "linear"):
            before += conv_flops(ci)
            after += conv_flops(ci, r_out[mod], r_in[mod])
    return before, after


def conv_flops(ci, removed_out: int = 0, removed_in: int = 0) -> float:
    """FLOPs of one traced conv/linear (graph.ConvInfo) with some output/input channels removed."""
    dw = ci.groups > 1 and ci.groups == ci.in_channels == ci.out_channels
    cin_g = 1 if dw else (ci.in_channels - removed_in) // ci.groups
    return 2.0 * ci.out_hw * (ci.out_channels - removed_out) * cin_g * ci.kernel


@torch.no_grad()
def shrink_to(model: nn.Module, channels: dict[str, dict[str, int]]) -> nn.Module:
    """Resize a freshly built model's layers to a channel table (channels.json), in place, so that the
    pruned state dict loads into it: yaml + channels.json + state dict rebuild a pruned model."""
    modules = dict(model.named_modules())
    before = channel_table(model)
    for name, spec in channels.items():
        m = modules.get(name)
        if isinstance(m, nn.Conv2d):
            groups = spec.get("groups", m.groups)
            shape = (spec["out"], spec["in"] // groups, *m.weight.shape[2:])
            m.weight = nn.Parameter(m.weight.new_zeros(shape))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_zeros(spec["out"]))
            m.groups = groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = spec["features"]
            for p in ("weight", "bias"):
                if getattr(m, p) is not None:
                    setattr(m, p, nn.Parameter(getattr(m, p).new_zeros(n)))
            for b in ("running_mean", "running_var"):
                if getattr(m, b) is not None:
                    m._buffers[b] = getattr(m, b).new_zeros(n)
        elif isinstance(m, nn.Linear):
            m.weight = nn.Parameter(m.weight.new_zeros(spec["out"], spec["in"]))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_zeros(spec["out"]))
    for m in modules.values():
        _fix_attributes(m)
    sync_widths(model)
    if channel_table(model) != before:
        mark_yaml_pruned(model)
    return model


def load_pruned_state(model: nn.Module, channels: dict, state_dict: dict) -> nn.Module:
    """shrink_to + load_state_dict; other parameters (e.g. ImplicitA) take the state dict's shapes."""
    shrink_to(model, channels)
    own = dict(model.named_parameters())
    for k, v in state_dict.items():
        if k in own and own[k].shape != v.shape:
            mod_name, _, pname = k.rpartition(".")
            setattr(dict(model.named_modules())[mod_name], pname, nn.Parameter(torch.zeros_like(v)))
    model.load_state_dict(state_dict, strict=True)
    for m in model.modules():
        _fix_attributes(m)
    sync_widths(model)  # parameters outside conv/bn/linear (implicit offsets) took the state dict's shapes
    return model


@torch.no_grad()
def input_means(model: nn.Module, groups: GroupSet, removed: dict[int, list[int]], images) -> dict[str, torch.Tensor]:
    """Mean input activation per channel of every conv/linear that consumes a removed channel, over `images`
    (an iterable of float image batches): what bias compensation folds into the consumers."""
    consumers = {mod for (mod, tname, dim) in removal_slices(groups, removed) if tname == "weight" and dim == 1}
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name in consumers:
        mod = modules[name]
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue

        def hook(m, inp, name=name):
            x = inp[0].detach().float()
            dims = [0] + list(range(2, x.dim()))
            sums[name] = sums.get(name, 0) + x.mean(dims) * x.shape[0]
            counts[name] = counts.get(name, 0) + x.shape[0]

        handles.append(mod.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x in images:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: sums[k] / counts[k] for k in sums}


@torch.no_grad()
def compensate_biases(model: nn.Module, groups: GroupSet, removed: dict[int, list[int]],
                      means: dict[str, torch.Tensor]) -> None:
    """Before cutting: add each removed input channel's mean contribution (weight sum x mean activation) to
    its consumer's bias — or, for a conv followed by BatchNorm without bias, subtract it from the BN's
    running mean — so consumers see roughly what they saw before (REFERENCE.md section 2)."""
    modules = dict(model.named_modules())
    following_bn = _following_bn(model)
    for (mod, tname, dim), idx in removal_slices(groups, removed).items():
        if tname != "weight" or dim != 1 or mod not in means:
            continue
        m = modules[mod]
        idx_t = torch.tensor(sorted(idx), device=m.weight.device)
        mu = means[mod].to(m.weight.device)[idx_t]
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            continue  # grouped consumers: a shared column serves several inputs; skip rather than guess
        w = m.weight.index_select(1, idx_t)
        delta = (w.flatten(2).sum(-1) if w.dim() > 2 else w) @ mu  # (out,)
        if m.bias is not None:
            m.bias.add_(delta)
        elif mod in following_bn:
            following_bn[mod].running_mean.sub_(delta)
        else:
            m.bias = nn.Parameter(delta.clone())


def _following_bn(model: nn.Module) -> dict[str, nn.Module]:
    """conv name -> the BatchNorm applied right after it in the same block (YOLO Conv, torchvision pairs)."""
    out = {}
    for name, m in model.named_modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            out[f"{name}.conv" if name else "conv"] = bn
        if isinstance(m, nn.Sequential) and len(m) >= 2:
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.modules.batchnorm._BatchNorm):
                    out[f"{name}.{i}"] = m[i + 1]
    return out
