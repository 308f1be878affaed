# AGPL-3.0 License
"""A per-conv latency cost model from a runtime's measurements (timed by prune/latency_table.py).

Each conv's entry holds `out`: its time at its full input width for kept output counts on a grid (`out_grid`),
and `in`: its time at its full output width for a few input widths (`in_grid`). The model is separable:
ms(c_in, c_out) = out(c_out) x in(c_in) / in(full), each interpolated linearly (0 channels cost 0).
`LatencyTable.cost` has the shape of prune.surgery.estimate_flops, so PAGCP's budget search can price cuts by
predicted milliseconds instead of FLOPs; `rewarded` / `group_counts` are the kept counts the runtime rewards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from prune.groups import GroupSet
from prune.surgery import removal_slices, removed_counts

MAX_POINTS = 32  # kept output counts timed per layer at most
IN_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
REWARD_TOL = 0.03  # a count is worth keeping when the next larger one is more than this share slower


def out_grid(n: int) -> list[int]:
    """Kept output counts timed for a layer of n channels: a power-of-two step leaving at most MAX_POINTS points."""
    step = 1
    while n / step > MAX_POINTS:
        step *= 2
    return sorted({*range(step, n + 1, step), n})


def in_grid(n: int) -> list[int]:
    return sorted({max(1, int(round(f * n))) for f in IN_FRACTIONS})


@dataclass
class LatencyTable:
    """Per-conv latency curves on one runtime (see the module docstring); `meta` names the runtime and settings."""

    meta: dict
    layers: dict[str, dict] = field(default_factory=dict)  # name -> {cin, cout, dw, out: [[c, ms]], in: [[c, ms]]}

    def layer_ms(self, name: str, cin: int, cout: int) -> float:
        """Predicted ms of one conv keeping cin inputs and cout outputs (0 for a layer not in the table)."""
        t = self.layers.get(name)
        if t is None:
            return 0.0
        out = np.asarray([[0, 0.0]] + t["out"])
        ms = float(np.interp(cout, out[:, 0], out[:, 1]))
        if not t["dw"]:
            inn = np.asarray([[0, 0.0]] + t["in"])
            full = float(inn[-1, 1])
            ms *= float(np.interp(cin, inn[:, 0], inn[:, 1])) / full if full > 0 else 1.0
        return ms

    def cost(self, groups: GroupSet, removed: dict[int, list[int]]) -> tuple[float, float]:
        """(predicted ms of the convs before, after) a removal: estimate_flops' shape, the runtime's measure."""
        info = groups.graph.conv_info
        r_out, r_in = removed_counts(groups, removed, ("conv",))
        before = after = 0.0
        for mod, ci in info.items():
            if ci.kind != "conv":
                continue
            before += self.layer_ms(mod, ci.in_channels, ci.out_channels)
            dw = ci.groups > 1 and ci.groups == ci.in_channels == ci.out_channels
            after += self.layer_ms(mod, ci.in_channels - (r_out[mod] if dw else r_in[mod]), ci.out_channels - r_out[mod])
        return before, after

    def rewarded(self, name: str, n_max: int | None = None) -> list[int]:
        """Kept output counts of one conv worth keeping: the last count on the grid before the layer's time steps
        up by more than REWARD_TOL (the edge of a SIMD block), and the full width. Times are taken as their
        envelope from above (the least time of any count at least as large), so a slow outlier does not count."""
        pts = [(c, ms) for c, ms in self.layers[name]["out"] if n_max is None or c <= n_max]
        env, best = [], float("inf")
        for c, ms in reversed(pts):
            best = min(best, ms)
            env.append((c, best))
        env.reverse()
        keep = [c for (c, ms), (_, nxt) in zip(env, env[1:]) if ms < nxt * (1 - REWARD_TOL)]
        return sorted({*keep, pts[-1][0]})

    def group_counts(self, groups: GroupSet) -> dict[int, list[int]]:
        """Per prunable group: the kept counts its producer convs reward (the counts rewarded by all of them;
        a group whose convs agree on none keeps every count timed for its first conv)."""
        out = {}
        for g in groups.prunable:
            sets = []
            for (mod, tname, dim) in removal_slices(groups, {g.id: [0]}):
                if tname == "weight" and dim == 0 and mod in self.layers:
                    sets.append(set(self.rewarded(mod, len(g))))
            if sets:
                common = set.intersection(*sets)
                out[g.id] = sorted(common | {len(g)}) if common else sorted(sets[0] | {len(g)})
        return out


def fingerprint(model: nn.Module, groups: GroupSet) -> str:
    """A short hash of the convs' geometry at the traced size: same architecture and widths, same table."""
    mods = dict(model.named_modules())
    rows = []
    for name, ci in sorted(groups.graph.conv_info.items()):
        m = mods.get(name)
        if ci.kind == "conv" and isinstance(m, nn.Conv2d):
            rows.append([name, ci.in_channels, ci.out_channels, list(m.kernel_size), list(m.stride),
                         list(m.padding) if not isinstance(m.padding, str) else m.padding, m.groups, ci.in_hw])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
