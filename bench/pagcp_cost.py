# AGPL-3.0 License
"""PAGCP cost: the reference protocol vs this toolkit's fast path, side by side in one process.

Reference protocol (seed 000's compress.py): every trial physically prunes a copy of the model and computes
the task losses over the whole evaluation set; every ratio is tried until the first trip.
Fast path (compress.py): the same greedy decisions with reversible masks on the live model and the task
losses over a seeded calibration subset of training images (--calib-images).

Both run the same PAGCP policy (same order, thresholds, lambda), so the only difference is the oracle.
Printed: wall time and image-forwards of each, their ratios, and how many units got the same ratio
(within one grid step), the agreement that says whether the calibration subset is large enough.

    python bench/pagcp_cost.py                                  # demo base model, shapes val set of 640 images
    python bench/pagcp_cost.py --weights yolov5n.pt --data coco128.yaml --img 320 --calib-images 16
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402,F401


class ReferenceOracle:
    """Per trial: copy the model, cut the masked channels for real, average the task losses over every
    evaluation image. No masks in the evaluated model, no caching between trials."""

    def __init__(self, model, groups, loader, criterion, device):
        self.model, self.groups, self.loader, self.criterion, self.device = model, groups, loader, criterion, device
        self.policy = None
        self.calls = self.image_forwards = 0

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        from engine.distill import raw_outputs
        from prune.surgery import apply_removal

        masks = self.policy.masks
        removed = masks.removed()
        masks.detach()  # the copy must not carry the live model's mask hooks
        try:
            m = copy.deepcopy(self.model).eval()
        finally:
            masks.attach()
        if removed:
            apply_removal(m, self.groups, removed)
        self.calls += 1
        total, n = None, 0
        for b in self.loader:
            img = b["img"].to(self.device).float() / 255
            _, items = self.criterion(raw_outputs(m(img)), b)
            items = items.float().cpu().numpy() * img.shape[0]
            total = items if total is None else total + items
            n += img.shape[0]
        self.image_forwards += n
        return total / n


def main(argv=None) -> int:
    from compress import parse_opt
    from data.shapes import ensure_shapes
    from engine.compress import ensure_base_model
    from engine.data import build_val_loader, check_dataset
    from engine.loss import build_criterion
    from engine.oracle import CalibrationOracle, calibration_batches
    from models.loader import load_model
    from prune import build_groups
    from prune.pagcp import PAGCP, PAGCPConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="default: the compress.py demo base model (trained if absent)")
    ap.add_argument("--data", default=None, help="default: built-in shapes with a 640-image evaluation set")
    ap.add_argument("--img", type=int, default=160)
    ap.add_argument("--eval-images", type=int, default=640, help="shapes evaluation set size (default data only)")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--initial_rate", type=float, default=0.05)
    ap.add_argument("--initial_thres", type=float, default=3.0)
    ap.add_argument("--exp", action="store_true", default=True)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")

    if args.weights is None:
        demo = parse_opt([])
        demo_data = check_dataset(demo.data, splits=("train", "val"))
        args.weights = str(ensure_base_model(demo, demo_data))
        args.img = demo.imgsz
    data_yaml = args.data or ensure_shapes(n_train=128, n_val=args.eval_images, seed=1)
    data = check_dataset(data_yaml, splits=("train", "val"))
    model = load_model(args.weights).to(device).eval()
    stride = int(max(model.stride.max(), 32))
    groups = build_groups(model, imgsz=args.img)
    criterion = build_criterion(model, None, args.img)
    tasks = list(criterion.names)
    cfg = PAGCPConfig(initial_rate=args.initial_rate, initial_thres=args.initial_thres, exp=args.exp)
    print(f"model {args.weights}, {len(groups.prunable)} units, data {data['yaml_file']}, img {args.img}")

    results = {}
    # reference protocol
    loader = build_val_loader(data, "val", args.img, args.batch, stride, workers=0, rect=False)
    ref_oracle = ReferenceOracle(model, groups, loader, criterion, device)
    policy = PAGCP(model, groups, ref_oracle, tasks, cfg, progress=False)
    ref_oracle.policy = policy
    t = time.perf_counter()
    _, ref_dec = policy.run()
    results["reference"] = (time.perf_counter() - t, ref_oracle.image_forwards, ref_oracle.calls, ref_dec)
    # fast path
    batches = calibration_batches(data, args.img, args.calib_images, min(args.batch, 16), seed=0, stride=stride)
    t = time.perf_counter()
    fast_oracle = CalibrationOracle(model, batches, criterion, tasks, device)
    _, fast_dec = PAGCP(model, groups, fast_oracle, tasks, cfg, progress=False).run()
    results["fast"] = (time.perf_counter() - t, fast_oracle.image_forwards, fast_oracle.calls, fast_dec)

    print(f"\n{'protocol':<12}{'seconds':>10}{'image-fwd':>12}{'oracle calls':>14}{'units pruned':>14}")
    for k, (sec, fwd, calls, dec) in results.items():
        print(f"{k:<12}{sec:>10.1f}{fwd:>12,}{calls:>14}{sum(1 for d in dec if d.removed):>14}")
    (rs, rf, _, rd), (fs, ff, _, fd) = results["reference"], results["fast"]
    by_group = {d.group: d.ratio for d in fd}
    same = sum(abs(d.ratio - by_group[d.group]) <= cfg.step + 1e-9 for d in rd)
    print(f"\nwall-time ratio {rs / fs:.1f}x (target >= 10x), image-forward ratio {rf / max(ff, 1):.1f}x "
          f"(target >= 20x), units within one grid step {same}/{len(rd)} = {same / len(rd):.0%} (target >= 90%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
