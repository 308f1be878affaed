# AGPL-3.0 License
"""Plots of a compression run: kept channels per layer, PAGCP loss-vs-ratio curves, mAP/GFLOPs per round."""

from __future__ import annotations

import math
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_channels(base: dict, pruned: dict, path: Path) -> None:
    """Bars of output channels per conv layer: base (light) vs kept (dark)."""
    names = [n for n in base if n in pruned and "out" in base[n] and "groups" in base[n]]  # convs
    if not names:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(names)), 4), tight_layout=True)
    x = range(len(names))
    ax.bar(x, [base[n]["out"] for n in names], color="#c8d7ea", label="base")
    ax.bar(x, [pruned[n]["out"] for n in names], color="#2a5b9b", label="kept")
    ax.set_xticks(list(x), names, rotation=90, fontsize=5)
    ax.set_ylabel("output channels")
    ax.legend()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_loss_curves(decisions: list[dict], tasks: list[str], path: Path, per_row: int = 6) -> None:
    """One panel per PAGCP unit: each task's loss/base against the ratio tried, with the threshold."""
    units = [d for d in decisions if d.get("curve")]
    if not units:
        return
    plt = _plt()
    rows = math.ceil(len(units) / per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(2.4 * per_row, 2.0 * rows), squeeze=False, tight_layout=True)
    for ax, d in zip(axes.ravel(), units):
        curve = d["curve"]
        r = [c[0] for c in curve]
        for j, t in enumerate(tasks):
            ax.plot(r, [c[1 + j] for c in curve], marker=".", linewidth=1, label=t)
        ax.axhline(1 + d["threshold"], color="k", linestyle=":", linewidth=0.8)
        ax.axvline(d["ratio"], color="r", linewidth=0.8)
        ax.set_title(f"g{d['group']} {d['producers'][0] if d['producers'] else ''}"[:28], fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in axes.ravel()[len(units):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=5)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_rounds(summary: dict, path: Path) -> None:
    """mAP50-95 (before / after fine-tuning) and GFLOPs per round, round 0 = the base model."""
    rounds = summary.get("rounds") or []
    if not rounds:
        return
    plt = _plt()
    base = summary["base"]
    x = list(range(len(rounds) + 1))
    fig, ax = plt.subplots(figsize=(6, 3.5), tight_layout=True)
    ax.plot(x, [base["map50_95"]] + [r["map50_95"] for r in rounds], marker="o", label="mAP50-95")
    ax.plot(x[1:], [r["map50_95_before_finetune"] for r in rounds], marker="x", linestyle="--",
            label="mAP50-95 before fine-tune")
    ax.set_xlabel("round")
    ax.set_ylabel("mAP50-95")
    ax2 = ax.twinx()
    ax2.plot(x, [base["gflops"]] + [r["gflops"] for r in rounds], color="tab:red", marker="s", label="GFLOPs")
    ax2.set_ylabel("GFLOPs", color="tab:red")
    ax.set_xticks(x)
    ax.legend(loc="lower left", fontsize=7)
    fig.savefig(path, dpi=150)
    plt.close(fig)
