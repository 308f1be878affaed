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
    ax.set_title(f"output channels per conv: base vs kept ({sum(pruned[n]['out'] for n in names):,} of "
                 f"{sum(base[n]['out'] for n in names):,} kept)", fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=150)
    plt.close(fig)


LOSS_PANELS_PER_PAGE = 30  # 6 x 5 panels per loss_curves image: readable with 134 units (YOLOv9t) as 5 images


def plot_loss_curves(decisions: list[dict], tasks: list[str], path: Path, per_row: int = 6,
                     per_page: int = LOSS_PANELS_PER_PAGE) -> list[Path]:
    """PAGCP's search, one panel per visited unit (in visiting order): each task's loss / base against the ratio
    tried (the grid value; --divisor rounds the kept channels up), the unit's trip threshold (1 + thres) dotted, the
    ratio accepted as a red line and trials over the threshold crossed. At most `per_page` panels per image: path, then path_2.png, path_3.png, ...
    with one shared legend and axis labels each. Returns the files written."""
    plt = _plt()
    files = []
    for n, fig in enumerate(loss_curve_figures(decisions, tasks, per_row, per_page)):
        out = Path(path) if n == 0 else Path(path).with_name(f"{Path(path).stem}_{n + 1}{Path(path).suffix}")
        fig.savefig(out, dpi=150)
        plt.close(fig)
        files.append(out)
    for stale in Path(path).parent.glob(f"{Path(path).stem}_*{Path(path).suffix}"):  # an earlier pass's extra pages
        if stale not in files and stale.stem.rsplit("_", 1)[-1].isdigit():
            stale.unlink()
    return files


def loss_curve_figures(decisions: list[dict], tasks: list[str], per_row: int = 6,
                       per_page: int = LOSS_PANELS_PER_PAGE):
    """The figures plot_loss_curves saves, one per page of at most `per_page` units (a generator)."""
    units = [d for d in decisions if d.get("curve")]
    if not units:
        return
    plt = _plt()
    from matplotlib.lines import Line2D

    colors = {t: f"C{j}" for j, t in enumerate(tasks)}
    handles = [Line2D([], [], color=colors[t], marker=".", label=f"{t} loss / base") for t in tasks]
    handles += [Line2D([], [], color="k", linestyle=":", label="trip threshold 1 + thres"),
                Line2D([], [], color="r", label="ratio accepted"),
                Line2D([], [], color="k", marker="x", linestyle="", label="trial over the threshold")]
    pages = [units[i:i + per_page] for i in range(0, len(units), per_page)]
    for n, page in enumerate(pages):
        rows = math.ceil(len(page) / per_row)
        cols = min(per_row, len(page))
        fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.1 * rows + 1.0), squeeze=False)
        for k, (ax, d) in enumerate(zip(axes.ravel(), page)):
            curve = sorted(d["curve"], key=lambda c: c[0])
            r = [c[0] for c in curve]
            limit = 1 + d["threshold"]
            values = []
            for j, t in enumerate(tasks):
                y = [c[1 + j] for c in curve]
                values += y
                ax.plot(r, y, marker=".", linewidth=1, color=colors[t])
                over = [(x, v) for x, v in zip(r, y) if v > limit]
                if over:
                    ax.plot(*zip(*over), "kx", markersize=5)
            ax.axhline(limit, color="k", linestyle=":", linewidth=0.9)
            ax.axvline(d["ratio"], color="r", linewidth=0.9)
            lo, hi = min(values + [1.0]), max(values + [limit])
            pad = 0.08 * (hi - lo or 0.01)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlim(-0.02, max(r + [d["ratio"]]) + 0.05)
            more = f" +{len(d['producers']) - 1}" if len(d.get("producers") or []) > 1 else ""
            first = d["producers"][0] if d.get("producers") else ""
            trip = f", tripped by {d['tripped_by']}" if d.get("tripped_by") else ", never tripped"
            ax.set_title(f"#{n * per_page + k + 1} g{d['group']} {first}{more}\naccepted {d['ratio']:.2f}{trip}",
                         fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in axes.ravel()[len(page):]:
            fig.delaxes(ax)
        first, last = n * per_page + 1, n * per_page + len(page)
        fig.suptitle(f"PAGCP search per unit, in visiting order: units {first}-{last} of {len(units)}"
                     + (f" (image {n + 1} of {len(pages)})" if len(pages) > 1 else ""), fontsize=10)
        fig.supxlabel("ratio tried (share of the unit's channels asked to go; --divisor rounds the kept count up)",
                      fontsize=9)
        fig.supylabel("task loss / its base (calibration set)", fontsize=9)
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
        yield fig


def plot_rounds(summary: dict, path: Path) -> None:
    """mAP50-95 (after and before fine-tuning) and GFLOPs of the base model and of each round, named as the
    console names them ('base', 'round 0', ...), in two panels so no marker hides another."""
    fig = rounds_figure(summary)
    if fig is not None:
        fig.savefig(path, dpi=150)
        _plt().close(fig)


def rounds_figure(summary: dict):
    """The figure plot_rounds saves (None without rounds)."""
    rounds = summary.get("rounds") or []
    if not rounds:
        return None
    plt = _plt()
    base = summary["base"]
    x = list(range(len(rounds) + 1))
    labels = ["base"] + [f"round {r['round']}" for r in rounds]
    tuned = bool(summary.get("epochs"))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(5.0, 1.3 * len(x) + 2), 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]}, tight_layout=True)
    after = [base["map50_95"]] + [r["map50_95"] for r in rounds]
    ax.plot(x, after, marker="o", color="tab:blue",
            label="mAP50-95 after fine-tuning" if tuned else "mAP50-95 (no fine-tuning)")
    if tuned:
        before = [base["map50_95"]] + [r["map50_95_before_finetune"] for r in rounds]
        ax.plot(x, before, marker="x", linestyle="--", color="tab:orange", label="mAP50-95 right after the cut")
    for xi, v in zip(x, after):
        ax.annotate(f"{v:.3f}", (xi, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.margins(x=0.15, y=0.2)
    ax.set_ylabel("mAP50-95")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{summary.get('method', '')} on {Path(str(summary.get('weights', ''))).name}", fontsize=9)
    gf = [base["gflops"]] + [r["gflops"] for r in rounds]
    bars = ax2.bar(x, gf, color="tab:red", alpha=0.7, width=0.5, label="GFLOPs")
    for b, v in zip(bars, gf):
        ax2.annotate(f"{v:.2f} (x{v / gf[0]:.2f})" if gf[0] else f"{v:.2f}", (b.get_x() + b.get_width() / 2, v),
                     textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    ax2.set_ylim(0, max(gf) * 1.25 if max(gf) > 0 else 1)
    ax2.set_ylabel("GFLOPs")
    ax2.legend(fontsize=7, loc="upper right")
    ax2.set_xticks(x, labels)
    return fig
