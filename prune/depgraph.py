# AGPL-3.0 License
"""The channel dependency graph's data: members (parameter slices), elements unified by a union-find, conv
sites and the graph that prune/graph.py's tracer fills (prune.graph.trace builds one)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Member:
    """Slice `index` along `dim` of `module.<param>` (a parameter or buffer)."""

    module: str
    param: str
    dim: int
    index: int
    role: str  # 'out': produced/carried channel, 'in': consumed input channel


class UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


@dataclass
class Site:
    """A module output where masks are applied: its channels carry these element labels."""

    module: str
    labels: np.ndarray


@dataclass
class ConvInfo:
    """Spatial facts recorded during the trace, for FLOP and memory costs."""

    out_hw: int  # H*W of the output
    in_hw: int
    kernel: int  # kh*kw
    groups: int
    out_channels: int
    in_channels: int
    kind: str  # 'conv' | 'linear' | 'bn'


@dataclass
class DependencyGraph:
    uf: UnionFind = field(default_factory=UnionFind)
    members: dict[int, list[Member]] = field(default_factory=lambda: defaultdict(list))
    member_owner: dict[Member, int] = field(default_factory=dict)
    blocked: set[int] = field(default_factory=set)  # elements (any in a class blocks the class)
    sites: list[Site] = field(default_factory=list)
    conv_info: dict[str, ConvInfo] = field(default_factory=dict)
    act_hw: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # element -> activation pixels
    log: list[str] = field(default_factory=list)
    out_elements: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    # ---------------------------------------------------------------- building
    def new_elements(self, n: int) -> np.ndarray:
        return np.array([self.uf.add() for _ in range(n)], dtype=np.int64)

    def attach(self, element: int, member: Member) -> None:
        """A member belongs to exactly one class: attaching it twice unifies the two elements."""
        owner = self.member_owner.get(member)
        if owner is not None and self.uf.find(owner) != self.uf.find(element):
            self.uf.union(owner, element)
        elif owner is None:
            self.member_owner[member] = element
            self.members[element].append(member)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.uf.union(x, y)

    def block(self, labels: np.ndarray | None, why: str) -> None:
        if labels is None:
            return
        self.blocked.update(labels.tolist())
        if why not in self.log:
            self.log.append(why)

    # ---------------------------------------------------------------- queries
    def classes(self) -> dict[int, list[Member]]:
        """root element -> members of all elements unified with it."""
        out: dict[int, list[Member]] = defaultdict(list)
        for e, ms in self.members.items():
            out[self.uf.find(e)].extend(ms)
        return out

    def blocked_roots(self) -> set[int]:
        return {self.uf.find(e) for e in self.blocked}


# ----------------------------------------------------------------------------------- tracing
