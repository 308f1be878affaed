# AGPL-3.0 License
"""Per-layer sensitivity analysis and layer selection (YOLOv7 iterative pruning, seed 002).

A "layer" is a prunable group of the engine (a conv, or convs tied by residuals), indexed by its group
id: stable for a given architecture and printed by `show_layers`. For each rate, each layer alone is
masked at that rate (lowest-criterion channels), the model is validated, and one line is appended to
`output_{rate}.txt` in the seed's format:

    (index, (P, R, mAP50, mAP50-95, [per-class AP], (t_inference, t_nms, t_total, h, w, batch), params, GFLOPs))

Lines are flushed as they are written, so an interrupted analysis resumes where it stopped. A CSV
(`sensitivity.csv`), a heatmap (`sensitivity.png`, layers x rates -> mAP50-95) and `meta.json` (the
analysed model's params and GFLOPs, used as layer_selection defaults) are written at the end.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch.nn as nn

from prune.groups import GroupSet
from prune.masks import ChannelMasks
from prune.surgery import estimate_flops, keep_count


def parse_rates(text) -> list[float]:
    rates = ast.literal_eval(text) if isinstance(text, str) else text
    rates = [float(r) for r in (rates if isinstance(rates, (list, tuple)) else [rates])]
    if not rates or any(not 0 < r < 1 for r in rates):
        raise ValueError(f"--pruning-rate must be a rate or a list of rates in (0, 1), got {text!r}")
    return rates


def parse_pruning_params(text) -> float | list[tuple[int, float]]:
    """Seed 002's --pruning-params: a float for every layer, or "[(layer, rate), ...]"."""
    v = ast.literal_eval(text) if isinstance(text, str) else text
    if isinstance(v, (int, float)):
        if not 0 < float(v) < 1:
            raise ValueError(f"--pruning-params rate must be in (0, 1), got {v}")
        return float(v)
    try:
        pairs = [(int(i), float(r)) for i, r in v]
    except (TypeError, ValueError):
        raise ValueError(f"--pruning-params must be a float or a list of (layer, rate) pairs, got {text!r}") from None
    bad = [p for p in pairs if not 0 < p[1] < 1]
    if bad:
        raise ValueError(f"--pruning-params rates must be in (0, 1) (a rate of 1 would empty the layer): {bad}")
    return pairs


def layer_plan(groups: GroupSet, scores: dict[int, np.ndarray], params, divisor: int = 1,
               min_keep: int = 1) -> dict[int, list[int]]:
    """Removal plan for --pruning-params (a rate for all layers or per-layer rates). The removed count is
    rounded to an even number, as in the seed."""
    rates = {g.id: params for g in groups.prunable} if isinstance(params, float) else dict(params)
    plan = {}
    by_id = {g.id: g for g in groups.groups}
    for gid, rate in rates.items():
        g = by_id.get(gid)
        if g is None or not g.prunable:
            raise ValueError(f"layer {gid} is not a prunable layer (ids: compress.py --show-groups)")
        n_rm = int(round(rate * len(g)))
        n_rm -= n_rm % 2
        n_rm = len(g) - keep_count(len(g), n_rm, divisor, min_keep)
        if n_rm > 0:
            plan[gid] = np.argsort(scores[gid], kind="stable")[:n_rm].tolist()
    return plan


def show_layers(groups: GroupSet) -> str:
    lines = [f"{'layer':>5}  {'channels':>8}  {'MFLOPs/ch':>9}  producers"]
    for g in groups.prunable:
        lines.append(f"{g.id:5d}  {len(g):8d}  {g.flops.mean() / 1e6:9.3f}  {', '.join(g.producers)}")
    return "\n".join(lines)


def done_layers(path: Path) -> dict[int, tuple]:
    """layer id -> record of the complete lines of an output_{rate}.txt (empty if missing)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = ast.literal_eval(line)
                out[int(rec[0])] = rec
            except (ValueError, SyntaxError):
                break  # a line cut by an interruption: redo from there
    return out


def run_analysis(model: nn.Module, groups: GroupSet, evaluate: Callable[[], dict], scores: dict[int, np.ndarray],
                 rates: list[float], out_dir: Path, base_params: int, base_gflops: float,
                 progress: Callable[[str], None] = print, layers: list[int] | None = None,
                 meta: dict | None = None) -> dict[float, dict[int, tuple]]:
    """evaluate() -> {'p','r','map50','map50_95','maps','t_inf','t_nms','h','w','batch'} on the masked model.

    `layers` limits the analysis to these group ids (default: every prunable group). Each layer loses the
    channels `layer_plan` would remove at that rate (even count, as compress.py --pruning-params does).
    `meta` (e.g. the unpruned model's mAP) is stored in meta.json beside params/GFLOPs, written first so
    that layer_selection works on a partial analysis too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"params": base_params, "gflops": base_gflops, **(meta or {})}
    _write_meta(out_dir, meta, rates)
    todo = groups.prunable if layers is None else [g for g in groups.prunable if g.id in set(layers)]
    flops0 = estimate_flops(groups, {})[0]
    results: dict[float, dict[int, tuple]] = {}
    masks = ChannelMasks(model, groups)
    with masks:
        for rate in rates:
            f = out_dir / f"output_{rate}.txt"
            done = done_layers(f)
            if done:  # rewrite only the complete lines, then append
                f.write_text("".join(f"{done[k]!r}\n" for k in done))
            with open(f, "a") as fh:
                for g in todo:
                    if g.id in done:
                        continue
                    pos = layer_plan(groups, scores, [(g.id, rate)]).get(g.id, [])
                    masks.set_removed(g.id, pos)
                    m = evaluate()
                    masks.set_removed(g.id, [])
                    params = base_params - int(g.params[pos].sum())
                    gfl = base_gflops * estimate_flops(groups, {g.id: pos})[1] / flops0
                    rec = (g.id, (m["p"], m["r"], m["map50"], m["map50_95"], list(m["maps"]),
                                  (m["t_inf"], m["t_nms"], m["t_inf"] + m["t_nms"], m["h"], m["w"], m["batch"]),
                                  params, gfl))
                    fh.write(f"{rec!r}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    done[g.id] = rec
                    progress(f"rate {rate}: layer {g.id} ({', '.join(g.producers)}) mAP50-95 {m['map50_95']:.4f}")
            results[rate] = done
    _write_summary(results, out_dir, meta)
    return results


def _write_meta(out_dir: Path, meta: dict, rates: list[float]) -> None:
    f = out_dir / "meta.json"
    old = json.loads(f.read_text()) if f.exists() else {}
    meta = {**old, **meta, "rates": sorted(set(old.get("rates", [])) | set(rates))}
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, f)


def _write_summary(results, out_dir: Path, meta: dict) -> None:
    rates = sorted(results)
    layers = sorted({k for r in rates for k in results[r]})
    with open(out_dir / "sensitivity.csv", "w") as f:
        f.write("layer,rate,precision,recall,map50,map50_95,params,gflops\n")
        for r in rates:
            for k in layers:
                if k in results[r]:
                    _, (p, rc, m50, m, _maps, _t, params, gfl) = results[r][k]
                    f.write(f"{k},{r},{p:.6g},{rc:.6g},{m50:.6g},{m:.6g},{params},{gfl:.6g}\n")
    _write_meta(out_dir, meta, rates)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = np.array([[results[r][k][1][3] if k in results[r] else np.nan for r in rates] for k in layers])
        fig, ax = plt.subplots(figsize=(3 + len(rates), 1.5 + 0.18 * len(layers)))
        # the colour scale runs from 0 to the unpruned model's mAP: a small loss looks small
        base = (meta or {}).get("map50_95")
        top = max(float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0, base or 0.0) or 1.0
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=top)
        ax.set_xticks(range(len(rates)), [str(r) for r in rates])
        ax.set_yticks(range(len(layers)), [str(k) for k in layers], fontsize=6)
        ax.set_xlabel("pruning rate (this layer alone)")
        ax.set_ylabel("layer (compress.py --show-groups id)", fontsize=8)
        if base is not None:
            ax.set_title(f"mAP50-95 after pruning one layer; unpruned {base:.3f}", fontsize=9)
        fig.colorbar(im, ax=ax, label="mAP50-95")
        fig.tight_layout()
        fig.savefig(out_dir / "sensitivity.png", dpi=120)
        plt.close(fig)
    except Exception as e:  # a plot must never cost the analysis
        (out_dir / "sensitivity_plot_error.txt").write_text(str(e))


def load_analysis(out_dir: Path) -> dict[float, dict[int, tuple]]:
    res = {}
    for f in sorted(Path(out_dir).glob("output_*.txt")):
        res[float(f.stem.split("_", 1)[1])] = done_layers(f)
    if not res:
        raise FileNotFoundError(f"no output_*.txt in {out_dir}: run the sensitivity analysis first")
    return res


def select_layers(results, params_base: float, flops_base: float, params_layers: int, flops_layers: int,
                  params_map: float, flops_map: float) -> list[tuple[int, float]]:
    """Seed 002's selection: value = (base - after) * mAP^k for params and FLOPs; each layer takes its best
    rate; the best N layers by params and the best M by FLOPs are united."""
    best_p: dict[int, tuple[float, float]] = {}
    best_f: dict[int, tuple[float, float]] = {}
    for rate, rows in results.items():
        for k, rec in rows.items():
            _, (_p, _r, _m50, m, _maps, _t, params, gfl) = rec
            vp = (params_base - params) * (m**params_map)
            vf = (flops_base - gfl) * (m**flops_map)
            if k not in best_p or vp > best_p[k][0]:
                best_p[k] = (vp, rate)
            if k not in best_f or vf > best_f[k][0]:
                best_f[k] = (vf, rate)
    top_p = sorted(best_p, key=lambda k: -best_p[k][0])[:params_layers]
    top_f = sorted(best_f, key=lambda k: -best_f[k][0])[:flops_layers]
    chosen = {}
    for k in top_p:
        chosen[k] = best_p[k][1]
    for k in top_f:
        chosen[k] = max(chosen.get(k, 0.0), best_f[k][1])
    return sorted(chosen.items())
