# AGPL-3.0 License
"""Prunable groups: channel classes that share producers, with the cost of each channel.

A group is what a policy prunes with one ratio: e.g. one conv's outputs, or every conv tied by a
residual chain. Its channels are channel classes (prune.graph); removing channel i removes every
member of class i. Each channel knows its cost (params, FLOPs, activation memory) so criteria can
normalize by it (Group Fisher) and policies can order by it (PAGCP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from prune.graph import ConvInfo, DependencyGraph, Member, trace
from prune.patterns import ModuleMatcher
from prune.widths import unprunable_blocks


@dataclass
class Group:
    id: int
    classes: list[int]  # root element per channel
    members: list[list[Member]]  # per channel
    params: np.ndarray  # per channel: parameters removed with it
    flops: np.ndarray  # per channel: FLOPs removed (2 x MACs) at the traced input size
    act: np.ndarray  # per channel: activation elements removed (per image)
    producers: list[str] = field(default_factory=list)  # modules whose output channels these are
    prunable: bool = True
    reason: str = ""

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def layers(self) -> list[str]:
        return sorted({m.module for ms in self.members for m in ms})

    def describe(self) -> str:
        state = "prunable" if self.prunable else f"fixed ({self.reason})"
        return (
            f"group {self.id:3d}: {len(self):5d} ch  params/ch {self.params.mean():9.1f}  "
            f"MFLOPs/ch {self.flops.mean() / 1e6:8.3f}  {state}\n"
            f"    producers: {', '.join(self.producers)}"
        )


def _member_cost(m: Member, model_params: dict[str, torch.Tensor], info: dict[str, ConvInfo]) -> tuple[int, float]:
    """(params, FLOPs) that disappear with this member slice."""
    t = model_params.get(f"{m.module}.{m.param}" if m.module else m.param)
    if t is None:
        return 0, 0.0
    n = t.numel() // t.shape[m.dim] if t.dim() else 1
    is_param = isinstance(t, nn.Parameter)
    ci = info.get(m.module)
    flops = 0.0
    if ci is not None and m.param == "weight" and ci.kind in ("conv", "linear"):
        flops = 2.0 * n * ci.out_hw  # one output (or input) slice of the weight, applied at every pixel
    elif ci is not None and ci.kind == "bn" and m.param == "weight":
        flops = 2.0 * ci.out_hw
    return (n if is_param else 0), flops


def _block_unprunable_blocks(g: DependencyGraph, model: nn.Module) -> None:
    """Fail closed on blocks prune.widths cannot keep consistent (int attributes no rule accounts for) or marks
    atomic: every channel with a member inside such a block stays."""
    for block, why in unprunable_blocks(model).items():
        prefix = f"{block}." if block else ""
        hit = [e for e, ms in g.members.items() if any(m.module == block or m.module.startswith(prefix) for m in ms)]
        if hit:
            g.block(np.array(hit), f"unprunable: {block or '<model>'} ({type(model.get_submodule(block)).__name__}) "
                                   f"{why}")


def _is_producer(g: DependencyGraph, module: str) -> bool:
    ci = g.conv_info.get(module)
    return ci is not None and ci.kind in ("conv", "linear")


class GroupSet:
    """All groups of a model plus the graph they came from."""

    def __init__(self, model: nn.Module, example: torch.Tensor, ignore: list[str] | None = None):
        """`ignore`: module-name patterns (prune.patterns) whose groups stay fixed; a group is frozen when a
        pattern matches one of the modules whose output channels it removes (its convs, their BNs). A pattern
        that freezes no otherwise prunable group raises UsageError."""
        self.graph: DependencyGraph = trace(model, example)
        _block_unprunable_blocks(self.graph, model)
        self.example_shape = tuple(example.shape)
        self.groups: list[Group] = []
        self.class_index: dict[int, tuple[int, int]] = {}  # root -> (group id, channel position)
        self.ignored: dict[int, list[str]] = {}  # group id -> the --ignore patterns that froze it
        self._build(model, ModuleMatcher(ignore, "--ignore", "prunable layer"))

    def _build(self, model: nn.Module, ignore: ModuleMatcher) -> None:
        g = self.graph
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        classes = g.classes()
        blocked = g.blocked_roots()
        # classes sharing a producer slice (module, param, dim, role=out) belong to one group
        producer_of: dict[int, set[tuple[str, str]]] = {}
        for root, ms in classes.items():
            producer_of[root] = {
                (m.module, m.param) for m in ms if m.role == "out" and m.param == "weight" and _is_producer(g, m.module)
            }
        owner: dict[tuple[str, str], int] = {}
        parent = {r: r for r in classes}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for root, keys in producer_of.items():
            for k in keys:
                if k in owner:
                    a, b = find(owner[k]), find(root)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                else:
                    owner[k] = root
        buckets: dict[int, list[int]] = {}
        for root in classes:
            if producer_of[root]:
                buckets.setdefault(find(root), []).append(root)
        for gid, roots in enumerate(sorted(buckets.values(), key=lambda r: min(r))):
            roots.sort(key=lambda r: min((m.module, m.index) for m in classes[r] if m.role == "out"))
            members = [classes[r] for r in roots]
            params = np.zeros(len(roots))
            flops = np.zeros(len(roots))
            act = np.array([float(sum(g.act_hw.get(e, 0) for e in self._elements_of(r))) for r in roots])
            for i, ms in enumerate(members):
                for m in ms:
                    p, f = _member_cost(m, tensors, g.conv_info)
                    params[i] += p
                    flops[i] += f
            producers = sorted(
                {m.module for ms in members for m in ms if m.role == "out" and m.param == "weight" and _is_producer(g, m.module)}
            )
            grp = Group(gid, roots, members, params, flops, act, producers)
            hit = [r for r in roots if r in blocked]
            if hit:
                grp.prunable, grp.reason = False, "touches an op the tracer cannot prune through"
            elif len(roots) < 2:
                grp.prunable, grp.reason = False, "single channel"
            elif ignore:
                carriers = sorted({m.module for ms in members for m in ms if m.role == "out"})
                pats = ignore.any(producers + carriers)
                if pats:
                    grp.prunable, grp.reason = False, f"ignored by pattern {', '.join(pats)}"
                    self.ignored[gid] = pats
            self.groups.append(grp)
            for pos, r in enumerate(roots):
                self.class_index[r] = (gid, pos)
        ignore.check((p for grp in self.groups if grp.prunable or grp.id in self.ignored for p in grp.producers),
                     "compress.py --show-groups lists them")

    def ignored_text(self) -> str:
        """One line naming the groups the --ignore patterns froze ('' when none were given)."""
        if not self.ignored:
            return ""
        parts = [f"{gid} ({', '.join(self.groups[gid].producers)})" for gid in sorted(self.ignored)]
        pats = sorted({p for ps in self.ignored.values() for p in ps})
        return f"--ignore {' '.join(pats)}: froze {len(parts)} group(s): {'; '.join(parts)}"

    def _elements_of(self, root: int):
        if not hasattr(self, "_by_root"):
            by_root: dict[int, list[int]] = {}
            for e in range(len(self.graph.uf.parent)):
                by_root.setdefault(self.graph.uf.find(e), []).append(e)
            self._by_root = by_root
        return self._by_root.get(root, [])

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def total_flops(self) -> float:
        return float(sum(g.flops.sum() for g in self.groups))

    def dump(self) -> str:
        lines = [f"{len(self.groups)} groups, {len(self.prunable)} prunable "
                 f"(traced at input {self.example_shape})"]
        lines += [g.describe() for g in self.groups]
        if self.graph.log:
            lines.append("fail-closed decisions:")
            lines += [f"  {x}" for x in self.graph.log]
        return "\n".join(lines)
