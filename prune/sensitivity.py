# AGPL-3.0 License
"""Per-layer sensitivity analysis and layer selection (YOLOv7 iterative pruning, seed 002).

A "layer" is a prunable group of the engine (a conv, or convs tied by residuals), indexed by its group
id: stable for a given architecture and printed by `show_layers`. For each rate, each layer alone is
masked at that rate (lowest-criterion channels), the model is validated, and one line is appended to
`{stem}_{rate}.txt` (stem `output` unless --prune-output names another) in the seed's format:

    (index, (P, R, mAP50, mAP50-95, [per-class AP], (t_inference, t_nms, t_total, h, w, batch), params, GFLOPs))

Lines are flushed as they are written, so an interrupted analysis resumes where it stopped. A CSV
(`sensitivity.csv`), a heatmap (`sensitivity.png`, layers x rates -> mAP50-95) and `meta.json` (the
analysed model's params and GFLOPs, used as layer_selection defaults) are written at the end.
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch.nn as nn

from models.common import Conv, RepConv
from models.yolo import Detect
from prune import apply_removal, build_groups
from prune.groups import GroupSet
from prune.importance import get_criterion
from prune.masks import ChannelMasks
from prune.surgery import estimate_flops, keep_count
from utils.files import save_figure, write_json, write_text
from utils.flops import count_params, gflops

DEFAULT_STEM = "output"  # the seed's --prune-output output.txt -> output_{rate}.txt


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
    """Removal plan for --pruning-params (a rate for all layers or per-layer rates): the lowest-scored
    channels of each layer, rate x channels of them rounded UP to an even count as the seed's prune.py does
    (make_divisible(rate * channels, 2)), then capped so that --min-channels / --divisor hold."""
    rates = {g.id: params for g in groups.prunable} if isinstance(params, float) else dict(params)
    plan = {}
    by_id = {g.id: g for g in groups.groups}
    for gid, rate in rates.items():
        g = by_id.get(gid)
        if g is None or not g.prunable:
            raise ValueError(f"layer {gid} is not a prunable layer (ids: layers.txt of a --task sensitivity run, or "
                             "compress.py --show-groups)")
        n_rm = math.ceil(rate * len(g) / 2) * 2
        n_rm = len(g) - keep_count(len(g), n_rm, divisor, min_keep)
        if n_rm > 0:
            plan[gid] = np.argsort(scores[gid], kind="stable")[:n_rm].tolist()
    return plan


def prune_layers(model: nn.Module, params, criterion, imgsz: int = 64, divisor: int = 1, min_keep: int = 1,
                 seed: int = 0) -> dict:
    """Seed 002's "prune at load": remove, in place, the channels `--pruning-params` names (a rate for every
    layer, or [(layer id, rate), ...] with the ids of `show_layers`) by `criterion` (0-6 or a name), with the
    same layer_plan that `compress.py --pruning-params` and the sensitivity analysis use.

    The model must be unfused (criteria 4/5 read BatchNorm scales); it is traced once at `imgsz` pixels.
    Returns {'removed': {layer id: [positions]}, 'channels': removed count, 'layers': pruned layer count,
    'params': (before, after), 'gflops': (before, after) at imgsz}. Raises ValueError for an unknown
    criterion or a layer id that is not prunable."""

    score = get_criterion(criterion)
    params = parse_pruning_params(params)
    groups = build_groups(model, imgsz=imgsz)
    p0, f0 = count_params(model), gflops(model, imgsz)
    ids = {gid for gid, _ in params} if isinstance(params, list) else {g.id for g in groups.prunable}
    scores = {g.id: score(model, g, seed=seed) for g in groups.prunable if g.id in ids}
    removed = layer_plan(groups, scores, params, divisor=divisor, min_keep=min_keep)
    apply_removal(model, groups, removed)
    return {"removed": removed, "channels": int(sum(map(len, removed.values()))), "layers": len(removed),
            "params": (p0, count_params(model)), "gflops": (f0, gflops(model, imgsz))}


def seed_conv_indices(model: nn.Module) -> dict[str, int]:
    """Conv weight name -> the layer index seed 002's scripts use for it: the position of its conv block in
    the model's module order, counting every Conv and RepConv block and each Detect/IDetect output conv
    (the seed's get_conv_layers). RepConv's two branch convs share one index."""
    convs: tuple[type, ...] = (Conv,)
    try:  # ultralytics' Conv blocks count the same way (their heads are not the seed's Detect)
        from ultralytics.nn.modules.conv import Conv as UConv

        convs += (UConv,)
    except ImportError:
        pass
    index: dict[str, int] = {}
    k = 0
    for name, m in model.named_modules():
        if isinstance(m, RepConv) and hasattr(m, "rbr_dense"):  # a fused RepConv has no branches left
            index[f"{name}.rbr_dense.0"] = index[f"{name}.rbr_1x1.0"] = k
        elif isinstance(m, convs) and isinstance(getattr(m, "conv", None), nn.Conv2d):
            index[f"{name}.conv"] = k
        elif isinstance(m, Detect):
            for i in range(len(m.m)):
                index[f"{name}.m.{i}"] = k + i
            k += len(m.m) - 1
        else:
            continue
        k += 1
    return index


def show_layers(groups: GroupSet, model: nn.Module | None = None) -> str:
    """One line per prunable layer: id, channels, MFLOPs per channel, seed 002's index of its convs (given
    the model), producers."""
    seed = seed_conv_indices(model) if model is not None else {}
    lines = [f"{'layer':>5}  {'channels':>8}  {'MFLOPs/ch':>9}  {'seed idx':>8}  producers"]
    for g in groups.prunable:
        idx = ",".join(str(i) for i in sorted({seed[p] for p in g.producers if p in seed})) or "-"
        lines.append(f"{g.id:5d}  {len(g):8d}  {g.flops.mean() / 1e6:9.3f}  {idx:>8}  {', '.join(g.producers)}")
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
                 meta: dict | None = None, stem: str = DEFAULT_STEM) -> dict[float, dict[int, tuple]]:
    """evaluate() -> {'p','r','map50','map50_95','maps','t_inf','t_nms','h','w','batch'} on the masked model.

    `layers` limits the analysis to these group ids (default: every prunable group). Each layer loses the
    channels `layer_plan` would remove at that rate (even count, as compress.py --pruning-params does).
    `meta` (e.g. the unpruned model's mAP) is stored in meta.json beside params/GFLOPs, written first so
    that layer_selection works on a partial analysis too. `stem` names the files: {stem}_{rate}.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"params": base_params, "gflops": base_gflops, **(meta or {}), "stem": stem}
    _write_meta(out_dir, meta, rates)
    todo = groups.prunable if layers is None else [g for g in groups.prunable if g.id in set(layers)]
    flops0 = estimate_flops(groups, {})[0]
    results: dict[float, dict[int, tuple]] = {}
    masks = ChannelMasks(model, groups)
    with masks:
        for rate in rates:
            f = out_dir / f"{stem}_{rate}.txt"
            done = done_layers(f)
            if done:  # rewrite only the complete lines, then append
                write_text(f, "".join(f"{done[k]!r}\n" for k in done))
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
    write_json(meta, f, indent=1)


def _write_summary(results, out_dir: Path, meta: dict) -> None:
    rates = sorted(results)
    layers = sorted({k for r in rates for k in results[r]})
    rows = ["layer,rate,precision,recall,map50,map50_95,params,gflops"]
    for r in rates:
        for k in layers:
            if k in results[r]:
                _, (p, rc, m50, m, _maps, _t, params, gfl) = results[r][k]
                rows.append(f"{k},{r},{p:.6g},{rc:.6g},{m50:.6g},{m:.6g},{params},{gfl:.6g}")
    write_text(out_dir / "sensitivity.csv", "\n".join(rows) + "\n")
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
        save_figure(fig, out_dir / "sensitivity.png", dpi=120)
        plt.close(fig)
    except Exception as e:  # a plot must never cost the analysis
        write_text(out_dir / "sensitivity_plot_error.txt", str(e))


def load_analysis(out_dir: Path, stem: str | None = None) -> dict[float, dict[int, tuple]]:
    """rate -> layer -> record from {stem}_{rate}.txt; the stem defaults to the one meta.json names."""
    out_dir = Path(out_dir)
    if stem is None:
        meta = out_dir / "meta.json"
        stem = (json.loads(meta.read_text()) if meta.exists() else {}).get("stem", DEFAULT_STEM)
    res = {}
    for f in sorted(out_dir.glob(f"{stem}_*.txt")):
        try:
            rate = float(f.stem[len(stem) + 1:])
        except ValueError:  # another file sharing the prefix
            continue
        res[rate] = done_layers(f)
    if not res:
        raise FileNotFoundError(f"no {stem}_*.txt in {out_dir}: run the sensitivity analysis first")
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
