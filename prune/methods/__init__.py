# AGPL-3.0 License
"""Pruning methods: a registry of name -> `plan(model, groups, ctx) -> Plan` (prune/methods/base.py).

Adding a method: a module under prune/methods/ with a `plan` function, one entry in METHODS below; compress.py's
`--method` choices come from METHOD_NAMES.
"""

from __future__ import annotations

from typing import Callable

from prune.methods import criteria, fisher, pagcp, slim
from prune.methods.base import Plan, PlanContext

PlanFn = Callable[..., Plan]
METHODS: dict[str, PlanFn] = {"pagcp": pagcp.plan, "fisher": fisher.plan,
                              **{name: criteria.plan for name in criteria.CRITERIA}, "slim": slim.plan}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> PlanFn:
    """The plan function of --method `name`. Raises KeyError for an unknown name."""
    return METHODS[name]


__all__ = ["METHODS", "METHOD_NAMES", "Plan", "PlanContext", "get_method"]
