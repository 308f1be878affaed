# AGPL-3.0 License
"""PAGCP vs uniform L1 vs global L1 at equal FLOPs, no fine-tuning (issue 5's side-by-side table).

For each PAGCP setting: run PAGCP, read the FLOPs share it reached, then prune the same base model with
uniform L1 and global L1 to that share (--target-flops), and print mAP50-95 vs GFLOPs for all.

    python bench/pagcp_quality.py --weights ../shared/assets/weights/yolov5n.pt --data coco128.yaml --img 320
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--img", type=int, default=320)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.02, 0.05], help="PAGCP --initial_rate values")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=0, help="fine-tune epochs after pruning (equal for all)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more compress.py flags for every run")
    a = ap.parse_args(argv)
    project = Path(tempfile.mkdtemp(prefix="pagcp_quality_"))
    common = ["--weights", a.weights, "--data", a.data, "--img", str(a.img), "--epochs", str(a.epochs),
              "--calib-images", str(a.calib_images), *a.extra]
    rows = []
    for rate in a.rates:
        s = _run(common + ["--method", "pagcp", "--initial_rate", str(rate)], project)
        share = s["flops_ratio"]
        rows.append((f"PAGCP rate {rate}", s))
        rows.append(("uniform L1", _run(common + ["--method", "l1", "--target-flops", f"{share:.4f}"], project)))
        rows.append(("global L1", _run(common + ["--method", "l1", "--global", "--target-flops", f"{share:.4f}"],
                                       project)))
    base = rows[0][1]["base"]
    print(f"\nbase: {base['gflops']:.3f} GFLOPs, mAP50-95 {base['map50_95']:.3f}; fine-tune epochs {a.epochs}")
    print(f"{'method':<20}{'GFLOPs':>8}{'share':>8}{'mAP50':>8}{'mAP50-95':>10}{'pruned':>8}")
    for name, s in rows:
        r = s["rounds"][-1]
        print(f"{name:<20}{r['gflops']:>8.3f}{s['flops_ratio']:>8.3f}{r['map50']:>8.3f}{r['map50_95']:>10.3f}"
              f"{r['map50_95_before_finetune']:>8.3f}")
    print(f"runs in {project}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
