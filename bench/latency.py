# AGPL-3.0 License
"""Does pruning make a model faster? Base vs pruned latency, side by side in one run (issue 7).

For each model, prune it with the engine to each --targets FLOPs share (uniform L1 and, with --global, the
global ranking too) at each channel --divisor, then time every variant together with its base model,
interleaved, on onnxruntime CPU (and PyTorch CPU with --pytorch) and print speedup next to the FLOPs factor.
The issue's target: speedup >= 0.8 x FLOPs reduction factor at batch 1 on onnxruntime CPU.

    python bench/latency.py                                            # yolov5n + yolov5s at 640, 50% FLOPs
    python bench/latency.py --models yolov5s.yaml --targets 0.5 0.7 --divisors 1 8 16 --global
    python bench/latency.py --models yolov5n.pt runs/compress/exp/pruned.pt --imgsz 320   # a real pair
    python bench/latency.py --models yolov5n.onnx yolov5n_int8.onnx yolov5n_int8_openvino_model --threads 1 2

Exported files (.onnx, *_openvino_model/, .torchscript) are timed as they are, at the shape they were exported
at, interleaved with each other on their own runtimes (bench/deploy.py time_exported, batch 1), speedup relative to
the first. With --models BASE PRUNED ... given as checkpoints (one base and already-pruned models of it), nothing is
pruned here: the pruned checkpoints are timed against the first model. Weights are random for yaml models;
latency does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import utils  # noqa: E402,F401
from bench.deploy import time_exported  # noqa: E402
from engine.backends import is_exported  # noqa: E402
from engine.latency import compare_latency, environment, resolve_threads  # noqa: E402
from models.loader import load_model  # noqa: E402
from prune import apply_removal, build_groups  # noqa: E402
from prune.importance import get_criterion  # noqa: E402
from prune.plans import plan_global, plan_uniform, solve_ratio_for_flops  # noqa: E402
from utils.flops import count_params, gflops  # noqa: E402


def pruned_variants(cfg: str, imgsz: int, targets: list[float], divisors: list[int], global_ranking: bool) -> dict:
    """{name: model}: the base model and one engine-pruned copy per (planner, target, divisor)."""
    torch.manual_seed(0)  # yaml models are random: the same weights, hence the same L1 plans, every run
    base = load_model(cfg).eval()
    groups = build_groups(base, imgsz=min(imgsz, 320))
    scores = {g.id: get_criterion("l1")(base, g) for g in groups.prunable}
    planners = {"uniform": plan_uniform, **({"global": plan_global} if global_ranking else {})}
    out = {"base": base}
    for pname, planner in planners.items():
        for t in targets:
            for d in divisors:
                removed, _ = solve_ratio_for_flops(groups, planner, t, scores=scores, divisor=d, min_keep=d)
                m = copy.deepcopy(base)
                apply_removal(m, groups, removed)
                out[f"{pname} {t:.2f} div{d}"] = m.eval()
    return out


def op_profile(model, imgsz: int, threads: int, runs: int) -> dict[str, float]:
    """Mean onnxruntime kernel milliseconds per run by operator type (largest first), from its own profiler."""
    import collections
    import json
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from engine.exporter import export_onnx, prepare

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "m.onnx"
        export_onnx(prepare(model, "cpu"), torch.zeros(1, 3, imgsz, imgsz), f, opset=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        x = {s.get_inputs()[0].name: np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)}
        for _ in range(runs):
            s.run(None, x)
        events = json.loads(Path(s.end_profiling()).read_text())
    total = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(total.most_common(8))


def _labels(paths: list[str]) -> list[str]:
    """'base', then each checkpoint's file name, or its shortest distinct path tail where names repeat
    (runs/compress/exp{2,3}/pruned.pt -> exp2/pruned.pt, exp3/pruned.pt): one row per model, none overwritten."""
    out = ["base"]
    for i, p in enumerate(paths[1:], 1):
        parts = Path(p).parts
        for k in range(1, len(parts) + 1):
            tail = "/".join(parts[-k:])
            if all("/".join(Path(q).parts[-k:]) != tail for j, q in enumerate(paths[1:], 1) if j != i):
                break
        out.append(tail)
    return out


def exported_table(files: list[str], thread_counts: list[int], warmup: int, repeats: int, json_file: str) -> int:
    """Batch-1 latency of exported files, interleaved per thread count, speedup relative to the first file."""
    labels = dict(zip(_labels(files)[1:], files[1:]))
    named = {Path(files[0]).name: files[0], **labels}
    rows = []
    print(f"environment: {environment(thread_counts[0])}; batch 1, median of {repeats} interleaved runs after "
          f"{warmup} warm-up")
    print(f"{'file':40s}{'threads':>8s}{'ms/img':>9s}{'speedup':>9s}")
    for t in thread_counts:
        times = time_exported(named, t, warmup, repeats)
        ref = times[Path(files[0]).name]["ms_per_image"]
        for k, r in times.items():
            rows.append({"model": k, "threads": t, **r, "speedup": ref / r["ms_per_image"]})
            print(f"{k:40s}{t:8d}{r['ms_per_image']:9.2f}{ref / r['ms_per_image']:9.2f}")
    if json_file:
        Path(json_file).write_text(json.dumps(rows, indent=2))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolov5n.yaml", "yolov5s.yaml"],
                    help="model yamls (pruned here), or a base checkpoint followed by pruned checkpoints of it")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5], help="FLOPs shares to prune to")
    ap.add_argument("--divisors", type=int, nargs="+", default=[1, 8, 16], help="round kept channels to these")
    ap.add_argument("--global", dest="global_ranking", action="store_true", help="also the global L1 ranking")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--pytorch", action="store_true", help="also time PyTorch CPU (eager)")
    ap.add_argument("--threads", type=int, nargs="+", default=[0],
                    help="CPU thread counts, each for both runtimes (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--profile", action="store_true",
                    help="also print onnxruntime's kernel time per operator type for every variant (first thread count)")
    a = ap.parse_args(argv)
    thread_counts = [resolve_threads(t) for t in a.threads]
    backends = ("onnxruntime", "pytorch") if a.pytorch else ("onnxruntime",)
    if any(is_exported(m) for m in a.models):
        return exported_table(a.models, thread_counts, a.warmup, a.repeats, a.json)
    if all(m.endswith(".pt") for m in a.models):  # a real base checkpoint and pruned ones
        suites = {Path(a.models[0]).name: {label: load_model(m).eval() for label, m in zip(_labels(a.models), a.models)}}
    else:
        suites = {m: pruned_variants(m, a.imgsz, a.targets, a.divisors, a.global_ranking) for m in a.models}
    print(f"environment: {environment(thread_counts[0])}; {a.imgsz}x{a.imgsz}, median of {a.repeats} interleaved runs "
          f"after {a.warmup} warm-up")
    report = []
    for suite, models in suites.items():
        info = {k: (count_params(m), gflops(m, a.imgsz)) for k, m in models.items()}
        rows = [r for t in thread_counts for r in compare_latency(models, a.imgsz, tuple(a.batch), backends, "cpu",
                                                                  threads=t, warmup=a.warmup, repeats=a.repeats)]
        print(f"\n{suite}")
        print(f"{'variant':22s}{'backend':13s}{'threads':>8s}{'batch':>6s}{'params':>11s}{'GFLOPs':>8s}{'ms/img':>9s}"
              f"{'FLOPs /':>9s}{'speedup':>9s}{'speedup/FLOPs':>15s}")
        for r in rows:
            ref = next(x for x in rows if x["model"] == "base" and
                       all(x[k] == r[k] for k in ("backend", "batch", "threads")))
            params, g = info[r["model"]]
            factor = info["base"][1] / g
            speedup = ref["ms_per_image"] / r["ms_per_image"]
            r.update(suite=suite, params=params, gflops=g, flops_factor=factor, speedup=speedup,
                     speedup_over_flops=speedup / factor)
            ok = "" if r["model"] == "base" else ("  ok" if speedup >= 0.8 * factor else "  < 0.8")
            print(f"{r['model']:22s}{r['backend']:13s}{r['threads']:8d}{r['batch']:6d}{params:11,d}{g:8.2f}{r['ms_per_image']:9.2f}"
                  f"{factor:9.2f}{speedup:9.2f}{speedup / factor:15.2f}{ok}")
        report += rows
        if a.profile:
            print(f"\nonnxruntime kernel ms per image by operator type ({thread_counts[0]} threads, {a.repeats} runs)")
            for name, m in models.items():
                ops = op_profile(m, a.imgsz, thread_counts[0], a.repeats)
                print(f"{name:22s} total {sum(ops.values()):6.1f}  " + "  ".join(f"{k} {v:.1f}" for k, v in ops.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
