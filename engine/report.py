# AGPL-3.0 License
"""What a compression run reports: report.md, results.csv and the before/after table printed at the end.

Built from the run's summary.json dict (engine.compressor.run), so a finished run's reports can be written again
from its summary alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from utils.files import write_text

TIME_KEYS = ("oracle_seconds", "prune_seconds", "finetune_seconds", "seconds")
FLOPS_TOLERANCE = 0.02  # a landed FLOPs share farther than this from --target-flops is warned about


def rounding_warning(k: int, share: float, target: float, divisor: int) -> str:
    """One visible line when a round's conv FLOPs share lands far from its target."""
    why = (f"channel counts rounded to multiples of {divisor} cannot land closer; a smaller --divisor can"
           if divisor > 1 else "the groups' channel steps are too coarse here")
    return (f"WARNING: round {k}: conv FLOPs share {share:.3f} is {share - target:+.3f} from its target "
            f"{target:.3f}: {why}")


def divisor_text(summary: dict) -> str:
    """'divisor 16 (kept channels rounded to multiples of 16): conv FLOPs share 0.598 for --target-flops 0.600
    (rounding moved it -0.002)'; '' for summaries written before the divisor was recorded."""
    d = summary.get("divisor")
    if d is None:
        return ""
    text = f"divisor {d} ({f'kept channels rounded to multiples of {d}' if d > 1 else 'channel counts not rounded'})"
    share, target = summary.get("flops_share"), summary.get("target_flops")
    if target is not None and isinstance(share, (int, float)) and math.isfinite(share):
        text += (f": conv FLOPs share {share:.3f} for --target-flops {target:.3f} "
                 f"({'rounding moved it' if d > 1 else 'off by'} {share - target:+.3f})")
    return text


def speed_hint(summary: dict) -> str:
    """A one-line hint when the measured latency speedup is below 1 ('' otherwise)."""
    lat = summary.get("latency") or {}
    sp = lat.get("speedup")
    if not isinstance(sp, (int, float)) or sp >= 1:
        return ""
    d = summary.get("divisor") or 1
    if d < 16:
        try_ = "--divisor 8 or --divisor 16" if d < 8 else "--divisor 16"
        return (f"HINT: the pruned model is slower than the base on this CPU (x{sp:.2f}): convolution kernels are "
                f"fastest when channel counts are multiples of 8 or 16; try {try_}.")
    return (f"HINT: the pruned model is slower than the base on this CPU (x{sp:.2f}) even with --divisor {d}: the cut "
            "is too small for latency to follow the FLOPs; prune more (--target-flops) or time with more repeats.")


def final_line(summary: dict) -> str:
    """The last line compress.py prints: FLOPs, params, mAP, divisor and speed (and a hint when slower)."""
    b, a = summary["before"], summary["after"]
    ratio = summary["flops_ratio"]
    text = (f"compressed: FLOPs x{ratio:.3f} (/{1 / ratio:.2f}), params x{summary['params_ratio']:.3f}, "
            f"mAP50-95 {b['map50_95']:.3f} -> {a['map50_95']:.3f}; {divisor_text(summary)}"
            + speedup_text(summary.get("latency") or {}, ratio))
    hint = speed_hint(summary)
    return text + (f"\n{hint}" if hint else "")


def head_line(summary: dict) -> str:
    """One line when the run changed the head's class set (--single-cls fine-tuning): the ratios compare the result
    with the base given the same head, and the base as loaded is named ('' when the head did not change)."""
    h = summary.get("head_change")
    if not h:
        return ""
    why = " (--single-cls)" if h.get("single_cls") else ""
    gf = f"{h['base_gflops']:.2f} GFLOPs, " if h.get("base_gflops") is not None else ""
    return (f"head: {h['base_nc']} -> {h['nc']} class(es){why}; FLOPs and params compare with the base given the same "
            f"{h['nc']}-class head (the base as loaded, {h['base_nc']} classes: {gf}{h['base_params']:,} params)")


def round_seconds(rounds: list[dict]) -> dict:
    """Seconds summed over rounds, each stage once: `oracle_seconds` (PAGCP's greedy pass; None for other
    methods), `prune_seconds` (the whole pruning stage, the oracle included), `finetune_seconds` and `seconds`
    (whole rounds: pruning, fine-tuning, validations and saving)."""
    out = {k: float(sum(r.get(k) or 0.0 for r in rounds)) for k in TIME_KEYS}
    if all(r.get("oracle_seconds") is None for r in rounds):
        out["oracle_seconds"] = None
    return out


def time_text(summary: dict) -> str:
    """'Time: PAGCP oracle 38 s, pruning 45 s (oracle included), fine-tuning 50 s, validation and saving 12 s;
    107 s for 1 round'. Parts are rounded to whole seconds and add up to the rounded total."""
    t = {k: summary.get(k) for k in (*TIME_KEYS, "run_seconds")}
    if t["seconds"] is None:
        return ""
    total, prune, tune = (round(t[k] or 0.0) for k in ("seconds", "prune_seconds", "finetune_seconds"))
    parts = []
    if t["oracle_seconds"] is not None:
        parts.append(f"PAGCP oracle {t['oracle_seconds']:.0f} s")
    parts.append(f"pruning {prune} s" + (" (oracle included)" if t["oracle_seconds"] is not None else ""))
    if tune:
        parts.append(f"fine-tuning {tune} s")
    parts.append(f"validation and saving {max(total - prune - tune, 0)} s")
    n = len(summary.get("rounds") or [])
    text = f"Time: {', '.join(parts)}; {total} s for {n} round{'s' if n != 1 else ''}"
    if t["run_seconds"] is not None:
        extra = ["loading", "the base model's validation"] + (["its training"] if summary.get("base_trained") else [])
        if isinstance((summary.get("latency") or {}).get("speedup"), (int, float)):
            extra.append("the latency measurement")
        text += (f"; {t['run_seconds']:.0f} s for the whole process (with {', '.join(extra[:-1])} and "
                 f"{extra[-1]})")
    return text + "."


def write_results(summary: dict, path: Path) -> None:
    cols = ("round", "params", "gflops", "map50", "map50_95", "map50_95_before_finetune", "image_forwards",
            *TIME_KEYS)
    b = summary["base"]
    lines = [",".join(cols), ",".join(str(x) for x in ("base", b["params"], b["gflops"], b["map50"], b["map50_95"],
                                                         *[""] * (len(cols) - 5)))]
    lines += [",".join("" if r.get(c) is None else str(r.get(c)) for c in cols) for r in summary["rounds"]]
    write_text(path, "\n".join(lines) + "\n")


def report_markdown(summary: dict, opt) -> str:
    b, a = summary["before"], summary["after"]
    lat = summary.get("latency") or {}
    lines = [f"# Compression report: {summary['method']} on {Path(str(summary['weights'])).name}", "",
             f"data `{summary['data']}`, image size {summary['imgsz']}, {len(summary['rounds'])} round(s), "
             f"{summary['epochs']} fine-tune epoch(s) per round", "",
             "| model | params | GFLOPs | mAP50 | mAP50-95 | latency (ms, ORT CPU b1) |", "|---|---|---|---|---|---|"]

    def ms(tag):
        v = lat.get(f"{tag}_ms")
        return f"{v:.1f}" if isinstance(v, (int, float)) else "-"

    lines.append(f"| base | {b['params']:,} | {b['gflops']:.2f} | {b['map50']:.3f} | {b['map50_95']:.3f} | {ms('base')} |")
    for r in summary["rounds"]:
        lines.append(f"| round {r['round']} | {r['params']:,} | {r['gflops']:.2f} | {r['map50']:.3f} | "
                     f"{r['map50_95']:.3f} (pruned {r['map50_95_before_finetune']:.3f}) | - |")
    lines.append(f"| **final** | {a['params']:,} | {a['gflops']:.2f} | {a['map50']:.3f} | {a['map50_95']:.3f} | "
                 f"{ms('pruned')} |")
    ratio = summary["flops_ratio"]
    lines += ["", f"FLOPs x{ratio:.3f} (/{1 / ratio:.2f}), params x{summary['params_ratio']:.3f}" + speedup_text(lat, ratio), ""]
    for extra in (head_line(summary), divisor_text(summary), speed_hint(summary)):
        if extra:
            lines += [extra[0].upper() + extra[1:] if extra.startswith("divisor") else extra, ""]
    if summary.get("image_forwards"):
        eq = f" ({summary['forward_equivalents']:,} full-model equivalents)" if summary.get("forward_equivalents") else ""
        lines += [f"PAGCP oracle: {summary['image_forwards']:,} image-forwards{eq}.", ""]
    lines.append(time_text(summary))
    lines += [f"\n**{w}**" for w in summary.get("warnings") or []]  # engine/safeguards.py: mAP collapsed, budget spent
    lines += ["", "Files: `pruned.pt` final model, `round_k/` (pruned.pt, weights/best.pt, channels.json; PAGCP: units.txt "
              "and loss_curves*.png, 30 units per image; with fine-tuning: results.csv/png), `summary.json`, "
              "`results.csv`, `rounds.png` (mAP50-95 and GFLOPs per round), `channels.png` (kept channels per layer)."]
    return "\n".join(lines) + "\n"


def speedup_text(lat: dict, flops_ratio: float) -> str:
    """The latency speedup next to the FLOPs factor it should approach (the yardstick of a structured cut)."""
    if isinstance(lat.get("speedup"), (int, float)):
        return (f"; latency speedup x{lat['speedup']:.2f} = {lat['speedup'] * flops_ratio:.2f} of the FLOPs factor "
                f"(onnxruntime CPU, batch 1, {lat['threads']} threads)")
    return f"; latency {lat['skipped']}" if lat.get("skipped") else ""


def console_table(summary: dict) -> str:
    row = "%-10s%12s%10s%10s%11s%16s"
    lines = [row % ("", "params", "GFLOPs", "mAP50", "mAP50-95", "before-finetune")]
    b = summary["base"]
    lines.append(row % ("base", f"{b['params']:,}", f"{b['gflops']:.2f}", f"{b['map50']:.3f}", f"{b['map50_95']:.3f}", ""))
    for r in summary["rounds"]:
        lines.append(row % (f"round {r['round']}", f"{r['params']:,}", f"{r['gflops']:.2f}", f"{r['map50']:.3f}",
                            f"{r['map50_95']:.3f}", f"{r['map50_95_before_finetune']:.3f}"))
    return "\n".join(lines)
