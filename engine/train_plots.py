# AGPL-3.0 License
"""A training run's figures: results.png (losses and metrics per epoch) and gamma_hist.png (sparsity training).
Matplotlib only, imported when a figure is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.train_state import METRIC_KEYS


def plot_results(rows: list[dict], path: Path) -> None:
    """results.png as YOLOv5 draws it: training losses and precision/recall on top, validation losses and mAPs
    below, one panel per column of results.csv against the epoch; columns without values are left out."""
    fig = results_figure(rows)
    if fig is not None:
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=150)
        plt.close(fig)


def results_figure(rows: list[dict]):
    """The figure plot_results saves (None without rows)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = list(dict.fromkeys(k for r in rows for k in r))
    top = [k for k in cols if k.startswith("train/")] + [k for k in METRIC_KEYS[:2] if k in cols]
    bottom = [k for k in cols if k.startswith("val/")] + [k for k in METRIC_KEYS[2:] if k in cols]
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def points(k):
        return [(e, float(r[k])) for e, r in zip(epochs, rows) if r.get(k) not in ("", None)]

    top, bottom = [k for k in top if points(k)], [k for k in bottom if points(k)]
    ncol = max(len(top), len(bottom), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(2.6 * ncol, 5), squeeze=False, tight_layout=True)
    for r, keys in enumerate((top, bottom)):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(keys):
                fig.delaxes(ax)
                continue
            x, y = zip(*points(keys[c]))
            ax.plot(x, y, marker=".", linewidth=1.5)
            ax.set_title(keys[c], fontsize=10)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    return fig


def plot_gammas(history: list[np.ndarray], path: Path) -> None:
    """Histogram of BN |gamma| per epoch: sparsity training should push a mass of them towards 0."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), tight_layout=True)
    hi = max(float(np.percentile(h, 99.5)) for h in history if h.size) if any(h.size for h in history) else 1.0
    bins = np.linspace(0, hi, 60)
    cmap = plt.get_cmap("viridis")
    for e, h in enumerate(history):
        counts, edges = np.histogram(h, bins=bins)
        ax.plot((edges[:-1] + edges[1:]) / 2, counts, color=cmap(e / max(len(history) - 1, 1)), label=f"epoch {e + 1}")
    ax.set_xlabel("|gamma|")
    ax.set_ylabel("BN channels")
    ax.set_title("BatchNorm |gamma| per epoch (sparsity training moves mass towards 0)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=150)
    plt.close(fig)
