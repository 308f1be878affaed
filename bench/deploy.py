# AGPL-3.0 License
"""Deployment side by side: mAP50-95 and batch-1 CPU latency of a base model and a pruned one, each FP32 and
post-training INT8, on onnxruntime and OpenVINO, at each thread count, in one run.

    python bench/deploy.py --weights yolov5n.pt --pruned runs/compress/exp/pruned.pt --data coco128.yaml --imgsz 320
    python bench/deploy.py --weights yolov5n.pt --data coco128.yaml --imgsz 320 --threads 1 2 --repeats 50

Every model is exported here with export.py's code (fixed batch-1 shape; INT8 calibrated on --data), scored with
val.py's code on the exported file, and all files are timed interleaved per thread count (time_exported). Writes
results.md, results.json and map_vs_latency.png into runs/deploy/exp*.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import utils  # noqa: E402,F401
import val  # noqa: E402
from engine import exporter  # noqa: E402
from engine.backends import load_exported  # noqa: E402
from engine.latency import environment, time_interleaved, torch_threads  # noqa: E402
from models.loader import load_model  # noqa: E402
from utils.files import save_figure, write_json, write_text  # noqa: E402
from utils.general import UsageError, increment_path  # noqa: E402

RUNTIMES = {"onnx": "onnxruntime", "openvino": "OpenVINO"}


def time_exported(files: dict[str, str | Path], threads: int, warmup: int = 5, repeats: int = 30,
                  batch: int = 1) -> dict[str, dict]:
    """{name: {ms_per_image, p10_ms, p90_ms, runs}} of each exported file, timed interleaved on the CPU with
    engine.latency's rules (one thread count for every runtime, engine.latency.time_interleaved, inputs prepared
    once; onnxruntime's pool threads do not spin, OpenVINO uses its latency hint: engine.backends)."""
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    models = {k: load_exported(f, "cpu", threads) for k, f in files.items()}
    shapes = {m.imgsz for m in models.values()}
    if len(shapes) != 1:
        raise UsageError(f"the files were exported at different sizes {sorted(shapes)}: export them at one --imgsz")
    h, w = shapes.pop()
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch_threads(threads), torch.no_grad():
        times = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, warmup, repeats)
    out = {}
    for k, t in times.items():
        ms = sorted(v * 1e3 / batch for v in t)
        out[k] = {"ms_per_image": ms[len(ms) // 2] if len(ms) % 2 else (ms[len(ms) // 2 - 1] + ms[len(ms) // 2]) / 2,
                  "p10_ms": ms[int(0.1 * (len(ms) - 1) + 0.5)], "p90_ms": ms[int(0.9 * (len(ms) - 1) + 0.5)],
                  "runs": len(ms)}
    return out


def export_variants(label: str, weights: str, out: Path, imgsz: int, data: str, images: int) -> dict[str, str]:
    """{'<label> <precision> <runtime>': file} for FP32 and INT8 ONNX and OpenVINO of one model."""
    model = load_model(weights)
    files = {}
    for precision in ("fp32", "int8"):
        res = exporter.run(weights=str(out / f"{label}.pt"), model=model, include=list(RUNTIMES), imgsz=[imgsz],
                           device="cpu", int8=precision == "int8", data=data, int8_images=images, project=str(out),
                           name=label, exist_ok=True)
        files.update({f"{label} {precision} {fmt}": r["file"] for fmt, r in res.items()})
    return files


def table(rows: list[dict], threads: list[int]) -> str:
    head = "| model | precision | runtime | mAP50-95 | " + " | ".join(f"ms ({t} thr)" for t in threads) + \
           " | " + " | ".join(f"speedup ({t} thr)" for t in threads) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(threads))]
    for r in rows:
        ms = " | ".join(f"{r['ms'][str(t)]:.1f}" for t in threads)
        sp = " | ".join(f"{r['speedup'][str(t)]:.2f}" for t in threads)
        lines.append(f"| {r['model']} | {r['precision'].upper()} | {RUNTIMES[r['format']]} | {r['map50_95']:.3f} | "
                     f"{ms} | {sp} |")
    return "\n".join(lines)


def plot(rows: list[dict], threads: list[int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    for t, marker in zip(threads, "os^D"):
        for r in rows:
            ax.scatter(r["ms"][str(t)], r["map50_95"], marker=marker, color="C0" if r["format"] == "onnx" else "C1")
            ax.annotate(f"{r['model']} {r['precision']} {t}t", (r["ms"][str(t)], r["map50_95"]), fontsize=7)
    ax.set_xlabel("batch-1 CPU latency (ms per image)")
    ax.set_ylabel("mAP50-95")
    ax.set_title("mAP vs latency (blue onnxruntime, orange OpenVINO; marker per thread count)")
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="base checkpoint (.pt)")
    ap.add_argument("--pruned", default="", help="pruned checkpoint of the same model (optional)")
    ap.add_argument("--data", required=True, help="dataset yaml: INT8 calibration and mAP")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--int8-images", type=int, default=300)
    ap.add_argument("--project", default="runs/deploy")
    ap.add_argument("--name", default="exp")
    a = ap.parse_args(argv)
    out = increment_path(Path(a.project) / a.name)
    out.mkdir(parents=True, exist_ok=True)
    models = {"base": a.weights, **({"pruned": a.pruned} if a.pruned else {})}
    files = {}
    for label, w in models.items():
        files.update(export_variants(label, w, out, a.imgsz, a.data, a.int8_images))
    times = {t: time_exported(files, t, a.warmup, a.repeats) for t in a.threads}  # before any validation
    rows = []
    for key, f in files.items():
        label, precision, fmt = key.split()
        res, _ = val.run(weights=f, data=a.data, imgsz=a.imgsz, project=str(out / "val"), name=key.replace(" ", "_"),
                         plots=False, no_progress=True, workers=0)
        rows.append({"model": label, "precision": precision, "format": fmt, "file": f, "map50_95": res.map50_95,
                     "map50": res.map50,
                     "ms": {str(t): times[t][key]["ms_per_image"] for t in a.threads}, "speedup": {}})
    for r in rows:
        ref = next(x for x in rows if x["model"] == "base" and x["precision"] == "fp32" and x["format"] == r["format"])
        r["speedup"] = {t: ref["ms"][t] / r["ms"][t] for t in r["ms"]}
    env = environment(a.threads[0])
    md = (f"command: `python bench/deploy.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
          f"environment: {env}\n\n{table(rows, a.threads)}\n")
    write_text(out / "results.md", md)
    write_json({"environment": env, "rows": rows}, out / "results.json")
    plot(rows, a.threads, out / "map_vs_latency.png")
    print(md)
    print(f"Results saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
