# AGPL-3.0 License
"""Pruning methods side by side at equal FLOPs, before and after an equal fine-tune budget (issues 5 and 6).

For each PAGCP FLOPs target (--targets F ...: `compress.py --target-flops F`, PAGCP's default oracle settings) and
each reference setting (--settings RATE:THRES, i.e. --initial_rate and --initial_thres with --exp): run PAGCP,
read the conv FLOPs share it reached, then prune the same base model with every other method in --methods to that
share, fine-tune each for the same --epochs, and print
params, GFLOPs, mAP before/after fine-tuning and compute seconds for all.

    python bench/pagcp_quality.py --weights ../shared/assets/weights/yolov5n.pt --data coco128.yaml --img 320
    python bench/pagcp_quality.py --weights W --data D --targets 0.95 0.9 0.79 0.7 0.6 0.5 --settings
    python bench/pagcp_quality.py --weights W --data D --settings 0.02:1.5 --epochs 3 \
        --methods l1 l1-global bn random fisher-flops fisher-act slim --sparse-weights sparse.pt

Methods: l1 | l2 | bn | bnl1 | random | taylor (uniform ratio), NAME-global (one global ranking),
fisher-flops | fisher-act (Group Fisher, --fisher-interval / --fisher-channels per prune), slim (network
slimming: BN |gamma| threshold solved for the FLOPs share, on --sparse-weights trained with train.py --sparsity).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402,F401


def _run(args: list[str], project: Path) -> dict:
    import compress

    rc = compress.main(args + ["--project", str(project), "--no-latency"])
    if rc:
        raise SystemExit(f"compress.py failed ({rc}): {' '.join(args)}")
    run = sorted(project.glob("exp*"), key=lambda p: p.stat().st_mtime)[-1]
    return json.loads((run / "summary.json").read_text())


def method_flags(method: str, share: float, a) -> list[str]:
    """compress.py flags that prune with `method` to `share` of the base FLOPs."""
    target = ["--target-flops", f"{share:.4f}"]
    if method.startswith("fisher-"):
        return ["--method", "fisher", "--fisher-norm", method.split("-", 1)[1], "--interval", str(a.fisher_interval),
                "--channels-per-step", str(a.fisher_channels), *target]
    if method == "slim":
        if not a.sparse_weights:
            raise SystemExit("method slim needs --sparse-weights (a model trained with train.py --sparsity)")
        return ["--method", "slim", "--weights", a.sparse_weights, *target]
    if method.endswith("-global"):
        return ["--method", method[: -len("-global")], "--global", *target]
    return ["--method", method, *target]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--img", type=int, default=320)
    ap.add_argument("--settings", nargs="*", default=["0.01:1.2", "0.02:1.5", "0.03:2"],
                    help="PAGCP --initial_rate:--initial_thres pairs (with --exp); none: only --targets")
    ap.add_argument("--targets", nargs="*", type=float, default=[], help="PAGCP --target-flops levels")
    ap.add_argument("--methods", nargs="+", default=["l1", "l1-global"], help="methods compared with PAGCP")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=0, help="fine-tune epochs after pruning (equal for all)")
    ap.add_argument("--sparse-weights", default="", help="slim: the same model after sparsity training")
    ap.add_argument("--fisher-interval", type=int, default=2, help="fisher: optimizer steps between prunes")
    ap.add_argument("--fisher-channels", type=int, default=16, help="fisher: channels masked per prune")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more compress.py flags for every run")
    a = ap.parse_args(argv)
    project = Path(tempfile.mkdtemp(prefix="pagcp_quality_"))
    common = ["--weights", a.weights, "--data", a.data, "--img", str(a.img), "--epochs", str(a.epochs),
              "--calib-images", str(a.calib_images), *a.extra]
    rows = []
    pagcp = [(f"PAGCP -> {t:g}", ["--target-flops", f"{t:g}"]) for t in a.targets]
    pagcp += [(f"PAGCP {r}:{t}", ["--exp", "--initial_rate", r, "--initial_thres", t])
              for r, t in (setting.split(":") for setting in a.settings)]
    for name, flags in pagcp:
        s = _run(common + ["--method", "pagcp", *flags], project)
        share = s.get("flops_share") or s["flops_ratio"]  # the conv FLOPs share, which --target-flops means
        rows.append((name, s))
        if a.json:  # partial results survive an interrupted benchmark
            Path(a.json).write_text(json.dumps([{"method": n, **r} for n, r in rows], indent=2, default=str))
        for method in a.methods:
            rows.append((method, _run(common + method_flags(method, share, a), project)))
            if a.json:
                Path(a.json).write_text(json.dumps([{"method": n, **r} for n, r in rows], indent=2, default=str))
    base = rows[0][1]["base"]
    lines = [f"base: {base['params']:,} params, {base['gflops']:.3f} GFLOPs, mAP50 {base['map50']:.3f}, "
             f"mAP50-95 {base['map50_95']:.3f}; fine-tune epochs {a.epochs}",
             "| method | params | GFLOPs | FLOPs share (conv) | mAP50-95 pruned | mAP50 | mAP50-95 | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in rows:
        r = s["rounds"][-1]
        lines.append(f"| {name} | {r['params']:,} | {r['gflops']:.3f} | {s.get('flops_share') or s['flops_ratio']:.3f} | "
                     f"{r['map50_95_before_finetune']:.3f} | {r['map50']:.3f} | {r['map50_95']:.3f} | {r['seconds']:.0f} |")
    print("\n" + "\n".join(lines))
    print(f"runs in {project}")
    if a.json:
        Path(a.json).write_text(json.dumps([{"method": n, **s} for n, s in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
