# AGPL-3.0 License
"""PAGCP cost: the reference protocol vs this toolkit's fast path, side by side in one process.

Reference protocol (seed 000's compress.py): every trial physically prunes a copy of the model and computes
the task losses over the whole evaluation set; every ratio is tried until the first trip.
Fast path (compress.py's defaults): reversible masks on the live model, the task losses over a seeded
calibration subset of training images (--calib-images), forwards that start at the unit's first layer
(--prefix-cache) and galloping + bisection over the ratio grid (--ratio-search gallop).

Both run the same PAGCP policy (same order, thresholds, lambda; the demo's rate 0.01 / thres 1.2 on the
reference's 0.05 grid), so the differences are the oracle and the search. Printed: wall time, image-forwards
and FLOPs-weighted forward equivalents of each, their ratios, and how many units got the same ratio (within
one grid step). That agreement has a floor set by the reference's own sampling: the greedy pass is
path-dependent, so a second, independent evaluation set of the same size does not reproduce it either
(measure it with --calib-images 640, which draws 640 other images). --same-state adds the agreement without
that cascade: each unit searched with the fast oracle on the reference's own state.

    python bench/pagcp_cost.py                                  # demo base model, shapes val set of 640 images
    python bench/pagcp_cost.py --calib-images 64 128 640 --same-state --reference-json ref.json
    python bench/pagcp_cost.py --weights yolov5n.pt --data coco128.yaml --img 320 --calib-images 16
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from dataclasses import asdict, replace
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
        self.flop_forwards = 0.0

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        from engine.distill import raw_outputs
        from prune.surgery import apply_removal, estimate_flops

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
        before, after = estimate_flops(self.groups, removed)
        total, n = None, 0
        for b in self.loader:
            img = b["img"].to(self.device).float() / 255
            _, items = self.criterion(raw_outputs(m(img)), b)
            items = items.float().cpu().numpy() * img.shape[0]
            total = items if total is None else total + items
            n += img.shape[0]
        self.image_forwards += n
        self.flop_forwards += n * after / before
        return total / n


def _fingerprint(args, cfg, weights) -> dict:
    import hashlib

    h = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return {"weights_sha256": h, "data": str(args.data), "eval_images": args.eval_images, "img": args.img,
            "policy": asdict(cfg)}


def _agreement(ref: list[dict], fast: list[dict], step: float) -> tuple[int, int, int]:
    """(same ratio, within one grid step, units) by group id."""
    by_group = {d["group"]: d["ratio"] for d in fast}
    same = sum(abs(d["ratio"] - by_group[d["group"]]) < 1e-9 for d in ref)
    near = sum(abs(d["ratio"] - by_group[d["group"]]) <= step + 1e-9 for d in ref)
    return same, near, len(ref)


def same_state_agreement(model, groups, oracle, tasks, cfg, ref_decisions: list[dict]) -> tuple[int, int]:
    """The oracle's fidelity without the greedy path's cascade: each unit is searched with this oracle on the
    reference's own state (its masks before that unit, its threshold; bases are this oracle's losses of the
    reference's accepted states). Returns (units within one grid step of the reference's ratio, units visited)."""
    from prune.methods.pagcp.reference import PAGCP, UnitDecision
    from prune.surgery import estimate_flops

    policy = PAGCP(model, groups, oracle, tasks, cfg, progress=False)
    policy.lam = 1.0  # thresholds come from the reference's decisions
    base_flops = estimate_flops(groups, {})[0]
    near = visited = 0
    with policy.masks:
        original = policy._losses()
        base = original.copy()
        for ref in ref_decisions:
            if not ref["trials"]:  # the reference had stopped (cumulative budget spent)
                break
            g = groups.groups[ref["group"]]
            d = UnitDecision(g.id, g.producers, len(g))
            policy._visit(g, d, base.copy(), ref["threshold"], original, base_flops)
            visited += 1
            near += abs(d.ratio - ref["ratio"]) <= cfg.step + 1e-9
            policy.masks.set_removed(g.id, ref["removed"])  # continue from the reference's state
            if ref["removed"]:
                base = np.maximum(base, policy._losses())
        policy.masks.reset()
    return near, visited


def main(argv=None) -> int:
    from compress import parse_opt
    from data.shapes import ensure_shapes
    from engine.demo import ensure_base_model
    from data.datasets import build_val_loader, check_dataset
    from models.loss import build_criterion
    from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches
    from models.loader import load_model
    from prune import build_groups
    from prune.methods.pagcp.reference import PAGCP, PAGCPConfig
    from utils.config import defaults
    from utils.files import write_json

    fast_defaults = defaults("compress")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="default: the compress.py demo base model (trained if absent)")
    ap.add_argument("--data", default=None, help="default: built-in shapes with a 640-image evaluation set")
    ap.add_argument("--img", type=int, default=160)
    ap.add_argument("--eval-images", type=int, default=640, help="shapes evaluation set size (default data only)")
    ap.add_argument("--train-images", type=int, default=640,
                    help="shapes training split the calibration images are drawn from (default data only)")
    ap.add_argument("--initial_rate", type=float, default=0.01)
    ap.add_argument("--initial_thres", type=float, default=1.2)
    ap.add_argument("--exp", action="store_true", default=True)
    ap.add_argument("--batch", type=int, default=32)
    fast = ap.add_argument_group("fast path (defaults: compress.py's, from cfg/default.yaml); several values = "
                                 "one fast run per combination, each compared with the one reference run")
    fast.add_argument("--calib-images", type=int, nargs="+", default=[fast_defaults["calib_images"]])
    fast.add_argument("--search", nargs="+", choices=("linear", "gallop"), default=[fast_defaults["ratio_search"]])
    fast.add_argument("--prefix-cache", nargs="+", type=int, choices=(0, 1), default=[int(fast_defaults["prefix_cache"])],
                      help="1: reuse activations of the layers a unit cannot change (compress.py --prefix-cache)")
    fast.add_argument("--calib-seed", type=int, default=0)
    ap.add_argument("--reference-json", default=None,
                    help="load the reference run from this file when it matches the model and settings, else run it "
                         "and save it there (for comparing fast settings without repeating the 40-minute reference)")
    ap.add_argument("--same-state", action="store_true",
                    help="also search every unit with each fast oracle on the reference's own state (agreement "
                         "without the cascade of earlier differences; not timed)")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")

    if args.weights is None:
        demo = parse_opt([])
        demo_data = check_dataset(demo.data, splits=("train", "val"))
        args.weights = str(ensure_base_model(demo, demo_data))
        args.img = demo.imgsz
    data_yaml = args.data or ensure_shapes(n_train=args.train_images, n_val=args.eval_images, seed=1)
    data = check_dataset(data_yaml, splits=("train", "val"))
    model = load_model(args.weights).to(device).eval()
    stride = int(max(model.stride.max(), 32))
    groups = build_groups(model, imgsz=args.img)
    criterion = build_criterion(model, None, args.img)
    tasks = list(criterion.names)
    cfg = PAGCPConfig(initial_rate=args.initial_rate, initial_thres=args.initial_thres, exp=args.exp)
    print(f"model {args.weights}, {len(groups.prunable)} units, data {data['yaml_file']}, img {args.img}")

    rows = []
    fp = _fingerprint(args, cfg, args.weights)
    ref_path = Path(args.reference_json) if args.reference_json else None
    ref = None
    if ref_path and ref_path.exists():
        saved = json.loads(ref_path.read_text())
        if saved.get("fingerprint") == fp:
            ref = saved["run"]
            print(f"reference run loaded from {ref_path} (measured {saved['run']['seconds']:.1f} s)")
        else:
            print(f"{ref_path} was written for another model or settings: running the reference again")
    if ref is None:  # reference protocol
        loader = build_val_loader(data, "val", args.img, args.batch, stride, workers=0, rect=False)
        ref_oracle = ReferenceOracle(model, groups, loader, criterion, device)
        policy = PAGCP(model, groups, ref_oracle, tasks, cfg, progress=False)
        ref_oracle.policy = policy
        t = time.perf_counter()
        _, dec = policy.run()
        ref = {"name": "reference", "seconds": time.perf_counter() - t, "image_forwards": ref_oracle.image_forwards,
               "flop_forwards": ref_oracle.flop_forwards, "calls": ref_oracle.calls,
               "decisions": [asdict(d) for d in dec]}
        if ref_path:
            write_json({"fingerprint": fp, "run": ref}, ref_path)
    rows.append(ref)

    for n_img, search, cache in itertools.product(args.calib_images, args.search, args.prefix_cache):
        batches = calibration_batches(data, args.img, n_img, min(args.batch, 16), seed=args.calib_seed, stride=stride)
        t = time.perf_counter()
        oracle = CalibrationOracle(model, batches, criterion, tasks, device, prefix_cache=bool(cache))
        policy = PAGCP(model, groups, oracle, tasks, replace(cfg, search=search), progress=False)
        _, dec = policy.run()
        rows.append({"name": f"fast {n_img} img {search}{' cache' if cache else ''}",
                     "seconds": time.perf_counter() - t, "image_forwards": oracle.image_forwards,
                     "flop_forwards": oracle.flop_forwards, "calls": oracle.calls,
                     "decisions": [asdict(d) for d in dec]})
        if args.same_state:  # not timed: a diagnostic of the oracle alone
            oracle = CalibrationOracle(model, batches, criterion, tasks, device, prefix_cache=bool(cache))
            rows[-1]["same_state"] = same_state_agreement(model, groups, oracle, tasks, replace(cfg, search=search),
                                                          ref["decisions"])

    print(f"\n{'protocol':<28}{'seconds':>9}{'image-fwd':>11}{'full-fwd eq.':>14}{'calls':>7}{'pruned':>8}"
          f"{'wall x':>8}{'img-fwd x':>10}{'eq. x':>7}{'same':>6}{'±1 step':>9}{'same state ±1':>15}")
    for r in rows:
        same, near, n = _agreement(ref["decisions"], r["decisions"], cfg.step)
        r.update(same=same, within_one_step=near, units=n)
        print(f"{r['name']:<28}{r['seconds']:>9.1f}{r['image_forwards']:>11,}{r['flop_forwards']:>14,.0f}{r['calls']:>7}"
              f"{sum(1 for d in r['decisions'] if d['removed']):>8}{ref['seconds'] / r['seconds']:>8.1f}"
              f"{ref['image_forwards'] / max(r['image_forwards'], 1):>10.1f}"
              f"{ref['flop_forwards'] / max(r['flop_forwards'], 1):>7.1f}{same:>6}{near / n:>9.0%}"
              + (f"{r['same_state'][0] / max(r['same_state'][1], 1):>15.0%}" if r.get("same_state") else ""))
    print("targets: wall x >= 10, image-forwards x >= 20, units within one grid step >= 90%. 'full-fwd eq.': image-"
          "forwards weighted by the share of the unpruned model's FLOPs actually run (the fast path's prefix cache runs "
          "only the layers from the unit on; the reference's pruned copies are smaller than the model)")
    if args.json:
        write_json({"fingerprint": fp, "runs": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
