# AGPL-3.0 License
"""bench/custom_data.py's report: per-seed runs folded into one row each (mean ± half-range), results.md / .csv /
.json and the two plots. Spread is the half-range (max - min) / 2 of the per-seed values: with two seeds it is the
distance of each seed from the mean."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.files import write_json, write_text
from utils.general import LOGGER

RESUMED = "resumed after an interruption: seconds leave out the interrupted part"
SPREAD = "half-range"  # what the ± of the tables is: (max - min) / 2 over seeds


def spread(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-range) of `values`; (None, None) for none."""
    if not values:
        return None, None
    return sum(values) / len(values), (max(values) - min(values)) / 2


def aggregate(per_seed: dict[int, dict], control: dict[int, dict]) -> dict:
    """One row from its runs by seed: mean and half-range of mAP50-95 and of the share of the same seed's control
    mAP50-95, the per-seed values, and the first run's structure fields (params, GFLOPs, ...: equal across seeds
    up to the cut's own randomness)."""
    ok = {s: r for s, r in sorted(per_seed.items(), key=lambda kv: int(kv[0])) if "error" not in r}
    errors = [f"seed {s}: {r['error']}" for s, r in per_seed.items() if "error" in r]
    if not ok:
        return {"notes": errors, "seeds": []}
    first = next(iter(ok.values()))
    maps = {s: r["map50_95"] for s, r in ok.items()}
    shares = {s: maps[s] / control[s]["map50_95"] for s in ok if s in control and control[s].get("map50_95")}
    row = {k: first.get(k) for k in ("method", "target", "divisor", "params", "gflops", "flops_share",
                                     "train_epochs")}
    for key in ("map50", "map50_pruned", "map50_95_pruned", "seconds"):
        vals = [r[key] for r in ok.values() if r.get(key) is not None]
        row[key] = spread(vals)[0]
    row["map50_95"], row["map50_95_pm"] = spread(list(maps.values()))
    row["share_of_control"], row["share_of_control_pm"] = spread(list(shares.values()))
    row["seeds"] = list(ok)
    row["per_seed"] = {str(s): {"map50_95": maps[s], "map50": ok[s].get("map50"),
                                "share_of_control": shares.get(s), "flops_share": ok[s].get("flops_share")}
                       for s in ok}
    notes = [n for r in ok.values() for n in r.get("notes", [])]
    row["notes"] = list(dict.fromkeys(notes)) + errors
    return row


def build_rows(opt, base: dict, steps: dict, sparse: dict, skipped: dict, lat: dict, labels: dict) -> list[dict]:
    """Table rows: base, control, then every pruned row (folded over seeds), then the rows not run."""
    from models.loader import load_model
    from utils.flops import count_params, gflops

    m = load_model(base["weights"])
    b_params, b_gflops = count_params(m), gflops(m, opt.imgsz)
    ms, control = lat["ms"], {int(s): r for s, r in steps["control"].items()}
    unpruned = {"divisor": 1, "target": 1.0, "params": b_params, "gflops": b_gflops, "flops_share": 1.0,
                "latency_ms": ms.get("base")}
    rows = [{**aggregate({opt.seeds[0]: base}, control), **unpruned, "run": "base", "train_epochs": 0,
             "method": f"unpruned, {opt.base_epochs} epochs"},
            {**aggregate(control, control), **unpruned, "run": "control", "train_epochs": opt.epochs,
             "method": f"unpruned, {opt.base_epochs}+{opt.epochs} epochs"}]
    for row, per in steps.items():
        if row == "control":
            continue
        r = aggregate({int(s): v for s, v in per.items()}, control)
        method = row.split("/")[-1].split("@")[0]
        r.update(run=row, method=labels[method], latency_ms=ms.get(row))
        if method == "slim" and sparse:
            r["notes"].append(f"includes a {opt.sparsity_epochs}-epoch sparsity phase (sparse model mAP50-95 "
                              f"{spread([s['map50_95'] for s in sparse.values()])[0]:.3f})")
        rows.append(r)
    for row, why in skipped.items():
        rows.append({"run": row, "method": labels[row.split("/")[-1].split("@")[0]], "notes": [f"not run: {why}"]})
    base_ms = ms.get("base")
    for r in rows:
        if r.get("latency_ms") and base_ms:
            r["speedup"] = base_ms / r["latency_ms"]
    return rows


def _fmt(v, f):
    return "" if v is None else format(v, f)


def _pm(r: dict, key: str, f: str) -> str:
    if r.get(key) is None:
        return ""
    return f"{r[key]:{f}} ± {r[key + '_pm']:{f}}" if len(r.get("seeds", [])) > 1 else format(r[key], f)


def table(rows: list[dict]) -> list[str]:
    head = ("| run | method | divisor | params | GFLOPs | FLOPs share | mAP50-95 pruned | mAP50 | mAP50-95 | "
            "per seed | share of control mAP50-95 | epochs after base | ms (ORT CPU, bs 1) | speedup | compute s | "
            "notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per = " ".join(f"{v['map50_95']:.3f}" for v in r.get("per_seed", {}).values())
        lines.append(
            f"| {r['run']} | {r['method']} | {r.get('divisor', '')} | {_fmt(r.get('params'), ',d')} | "
            f"{_fmt(r.get('gflops'), '.3f')} | {_fmt(r.get('flops_share'), '.3f')} | "
            f"{_fmt(r.get('map50_95_pruned'), '.3f')} | {_fmt(r.get('map50'), '.3f')} | {_pm(r, 'map50_95', '.3f')} | "
            f"{per} | {_pm(r, 'share_of_control', '.3f')} | {_fmt(r.get('train_epochs'), 'g')} | "
            f"{_fmt(r.get('latency_ms'), '.2f')} | {_fmt(r.get('speedup'), '.2f')} | {_fmt(r.get('seconds'), '.0f')} | "
            f"{'; '.join(r.get('notes', []))} |")
    return lines


def write_report(opt, save_dir: Path, base, steps, sparse, skipped, lat, labels: dict, settings: dict,
                 seconds: float) -> None:
    rows = build_rows(opt, base, steps, sparse, skipped, lat, labels)
    lines = [f"Data {opt.data}, weights {Path(opt.weights).name}, {opt.imgsz} px, batch {opt.batch_size}; base "
             f"{opt.base_epochs} epochs (seed {opt.seeds[0]}) and control {opt.epochs} more, hyp {opt.base_hyp}; "
             f"every pruned row {opt.epochs} epochs in all after the base (fine-tune: compress.py's recipe"
             f"{f', --compress-args {opt.compress_args}' if opt.compress_args else ''}); seeds "
             f"{' '.join(map(str, opt.seeds))}: mAP50-95 and share of control are mean ± {SPREAD} over seeds "
             f"(share: each seed's run over the same seed's control); latency: onnxruntime CPU, batch 1, "
             f"{lat['threads']} threads, median of {lat['repeats']} runs, first seed's models, interleaved. mAP after "
             "training unless marked 'pruned'.", "", *table(rows)]
    lines.append(f"\nTotal {seconds / 60:.1f} min in this invocation (earlier, resumed steps excluded).")
    write_text(save_dir / "results.md", "\n".join(lines) + "\n")
    keys = ["run", "method", "target", "divisor", "params", "gflops", "flops_share", "map50_pruned", "map50_95_pruned",
            "map50", "map50_95", "map50_95_pm", "share_of_control", "share_of_control_pm", "seeds", "train_epochs",
            "latency_ms", "speedup", "seconds", "notes"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "notes": "; ".join(r.get("notes", [])), "seeds": " ".join(map(str, r.get("seeds", [])))})
    write_text(save_dir / "results.csv", buf.getvalue())
    write_json({"settings": settings, "spread": SPREAD, "latency": lat, "rows": rows}, save_dir / "results.json")
    plot_results(rows, opt, lat, save_dir)
    LOGGER.info("\n".join(lines))
    LOGGER.info(f"Results saved to {save_dir}: results.md, results.csv, results.json, map_vs_gflops.png, "
                "map_vs_latency.png")


def plot_results(rows: list[dict], opt, lat: dict, save_dir: Path) -> None:
    """Mean mAP50-95 against GFLOPs and against measured latency: one line per method (error bars: the spread over
    seeds), unpruned models as points."""
    from utils.plots import _plt

    plt = _plt()
    axes_spec = (("gflops", f"GFLOPs at {opt.imgsz}x{opt.imgsz}", "map_vs_gflops.png"),
                 ("latency_ms", f"latency, ms per image (onnxruntime CPU, batch 1, {lat['threads']} threads)",
                  "map_vs_latency.png"))
    for key, xlabel, fname in axes_spec:
        fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        series = dict.fromkeys((r["run"].rsplit("/", 1)[0] if "/" in r["run"] else "", r["method"]) for r in rows[2:])
        for i, (variant, label) in enumerate(series):
            pts = [r for r in rows[2:] if r["method"] == label and (r["run"].rsplit("/", 1)[0] if "/" in r["run"]
                                                                   else "") == variant
                   and r.get(key) is not None and r.get("map50_95") is not None]
            name = f"{variant}: {label}" if variant else label
            line = sorted((r for r in pts if r.get("divisor", 1) == 1), key=lambda r: r[key])
            c = colors[i % len(colors)]
            ax.errorbar([r[key] for r in line], [r["map50_95"] for r in line], [r["map50_95_pm"] for r in line],
                        fmt="o-", color=c, label=name, capsize=3)
            div = [r for r in pts if r.get("divisor", 1) > 1]
            if div:
                ax.errorbar([r[key] for r in div], [r["map50_95"] for r in div], [r["map50_95_pm"] for r in div],
                            fmt="s", mfc="none", color=c, label=f"{name}, divisor {opt.divisor}", capsize=3)
        for r, marker in zip(rows[:2], ("*", "D")):
            if r.get(key) is not None and r.get("map50_95") is not None:
                ax.plot([r[key]], [r["map50_95"]], marker, color="black", markersize=11 if marker == "*" else 7,
                        label=r["method"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"mAP50-95 (val), mean ± {SPREAD} over seeds")
        ax.set_title(f"{Path(opt.data).stem}: pruned to equal FLOPs, {opt.epochs} epochs after the base each")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(save_dir / fname, dpi=150)
        plt.close(fig)
