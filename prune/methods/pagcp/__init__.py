# AGPL-3.0 License
"""PAGCP (performance-aware global channel pruning) in one folder: README.md explains the algorithm, the
departures from the reference, every knob and the cost model."""

from prune.methods.pagcp.method import plan

__all__ = ["plan"]
