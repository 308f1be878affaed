# AGPL-3.0 License
"""Reversible channel masks: trials zero channels without touching the model's structure.

A mask is one value per channel class. Forward hooks multiply the outputs of the graph's mask sites
(BatchNorm and other modules whose output would be non-zero on a removed channel) by the class mask,
so every tensor carrying a removed channel is exactly zero and the masked model computes what the
materialized (physically pruned) model computes. With `requires_grad`, per-sample masks give
Group Fisher's A·dL/dA summed over all coupled sites.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from prune.groups import GroupSet


def top_layer(module: str) -> int | None:
    """'model.12.cv1.bn' -> 12 (the index in a YOLO model's layer list), else None."""
    parts = module.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() else None


class ChannelMasks:
    def __init__(self, model: nn.Module, groups: GroupSet):
        self.model, self.groups = model, groups
        roots = [r for g in groups.groups for r in g.classes]
        self.index = {r: i for i, r in enumerate(roots)}
        self.values = torch.ones(len(roots))
        self.per_sample: torch.Tensor | None = None  # (N, n_classes) with grad, for Fisher
        uf = groups.graph.uf
        modules = dict(model.named_modules())
        self._sites = []
        self._site_layers: list[tuple[int | None, np.ndarray]] = []  # (top-level layer, mask indices) per site
        for site in groups.graph.sites:
            idx = [self.index.get(uf.find(int(e)), -1) for e in site.labels]
            if all(i < 0 for i in idx) or site.module not in modules:
                continue
            self._sites.append((modules[site.module], torch.tensor([i if i >= 0 else len(roots) for i in idx])))
            self._site_layers.append((top_layer(site.module), np.unique([i for i in idx if i >= 0])))
        self._handles = []

    # ------------------------------------------------------------------ control
    def attach(self) -> ChannelMasks:
        if not self._handles:
            for module, idx in self._sites:
                self._handles.append(module.register_forward_hook(self._hook(idx)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()

    def set_removed(self, group_id: int, positions) -> None:
        """Mask (remove) these channel positions of a group; others of the group are kept."""
        g = self.groups.groups[group_id]
        for r in g.classes:
            self.values[self.index[r]] = 1.0
        for pos in np.asarray(positions, dtype=int).tolist():
            self.values[self.index[g.classes[pos]]] = 0.0

    def removed(self) -> dict[int, list[int]]:
        """group id -> masked channel positions."""
        if not hasattr(self, "_group_idx"):
            self._group_idx = {g.id: np.array([self.index[r] for r in g.classes]) for g in self.groups.groups}
        zero = self.values.numpy() == 0
        out = {}
        for gid, idx in self._group_idx.items():
            pos = np.flatnonzero(zero[idx])
            if len(pos):
                out[gid] = pos.tolist()
        return out

    def reset(self) -> None:
        self.values.fill_(1.0)

    # ------------------------------------------------------------------ per-image masks (Fisher information)
    def start_per_sample(self, batch_size: int, device=None) -> torch.Tensor:
        """Give each of the next forward's batch_size images its own multiplier per mask class, all 1, shape
        (batch_size, classes), requiring grad: after a backward its gradient is dL_n/dm_n per image and channel."""
        self.per_sample = torch.ones(batch_size, len(self.values), device=device, requires_grad=True)
        return self.per_sample

    @staticmethod
    def fisher(grad: torch.Tensor) -> torch.Tensor:
        """Empirical Fisher information per mask class from per-image mask gradients (batch, classes):
        sum over images of grad^2, float64 on the CPU (Liu et al., Group Fisher Pruning, ICML 2021)."""
        return grad.detach().double().pow(2).sum(0).cpu()

    # ------------------------------------------------------------------ where masks act (for the oracle's cache)
    def first_layer(self, group_id: int) -> int | None:
        """Earliest top-level layer (model.N) whose output this group's mask can change; None when a site of the
        group is not inside a numbered layer (then nothing before it may be assumed unchanged)."""
        mine = {self.index[r] for r in self.groups.groups[group_id].classes}
        layers = [layer for layer, idx in self._site_layers if mine.intersection(idx.tolist())]
        if not layers or any(layer is None for layer in layers):
            return None
        return min(layers)

    def indices_before(self, layer: int) -> torch.Tensor:
        """Mask indices acting in layers < layer: while these values are unchanged, so are those layers' outputs."""
        idx = [i for lay, ii in self._site_layers if lay is None or lay < layer for i in ii.tolist()]
        return torch.tensor(sorted(set(idx)), dtype=torch.long)

    # ------------------------------------------------------------------ hook
    def _hook(self, idx: torch.Tensor):
        def apply(_m, _inp, out):
            if not isinstance(out, torch.Tensor):
                return out
            base = torch.cat((self.values, torch.ones(1))).to(out.device, out.dtype)
            if self.per_sample is not None:
                ps = torch.cat((self.per_sample, torch.ones(len(self.per_sample), 1, device=self.per_sample.device)), 1)
                m = ps[:, idx.to(ps.device)] * base[idx.to(out.device)]
                shape = (out.shape[0], out.shape[1]) + (1,) * (out.dim() - 2)
                return out * m.to(out.dtype).view(shape)
            m = base[idx.to(out.device)]
            shape = (1, out.shape[1]) + (1,) * (out.dim() - 2)
            return out * m.view(shape)

        return apply
