# AGPL-3.0 License
"""Engine cost on CPU: graph building (trace + groups, then the cut-vs-mask check of prune.verify) and surgery
time for yolov5s / yolov8s / yolo12n / yolo26n at 640, and the overhead of a masked forward versus a plain forward
(target <= 10%), measured side by side. Graph building of the newest families should stay within 2x of yolov8s.

    python bench/engine_bench.py [--imgsz 640] [--repeats 5] [--models yolov8s.yaml yolo12n.yaml ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.loader import load_model  # noqa: E402
from prune import ChannelMasks, apply_removal, build_groups  # noqa: E402
from prune.importance import get_criterion  # noqa: E402
from prune.plans import plan_uniform  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["yolov5s.yaml", "yolov8s.yaml", "yolo12n.yaml", "yolo26n.yaml"])
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{a.imgsz}x{a.imgsz}")
    print(f"{'model':14s}{'build groups s':>16s}{'verify s':>10s}{'surgery s':>11s}{'plain fwd ms':>14s}"
          f"{'masked fwd ms':>15s}{'overhead':>10s}")
    for cfg in a.models:
        model = load_model(cfg).eval()
        x = torch.rand(1, 3, a.imgsz, a.imgsz)
        t = time.perf_counter()
        build_groups(model, imgsz=a.imgsz, verify=False)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        groups = build_groups(model, imgsz=a.imgsz)
        t_verify = time.perf_counter() - t - t_build  # the same trace again, then prune.verify's check
        scores = {g.id: get_criterion("l1")(model, g) for g in groups.prunable}
        plan = plan_uniform(groups, scores, ratio=0.3)
        m2 = copy.deepcopy(model)
        t = time.perf_counter()
        apply_removal(m2, groups, plan)
        t_surgery = time.perf_counter() - t
        model(x)  # warm-up
        masks = ChannelMasks(model, groups)
        for gid, pos in plan.items():
            masks.set_removed(gid, pos)
        plain, masked = [], []
        for _ in range(a.repeats):  # interleave so drift hits both equally
            plain.append(timed(lambda m=model, x=x: m(x), 1))
            with masks:
                masked.append(timed(lambda m=model, x=x: m(x), 1))
        p, m = statistics.median(plain), statistics.median(masked)
        print(f"{cfg:14s}{t_build:16.2f}{t_verify:10.2f}{t_surgery:11.2f}{p * 1e3:14.1f}{m * 1e3:15.1f}"
              f"{(m / p - 1) * 100:9.1f}%")


if __name__ == "__main__":
    main()
