# AGPL-3.0 License
"""Inference latency: median time per image after warm-up, PyTorch and onnxruntime, CPU (and CUDA when present).

Fairness rules used everywhere here:
  * one CPU thread count for both runtimes: torch.set_num_threads(n) and onnxruntime intra_op_num_threads=n
    (inter-op 1, sequential execution);
  * models compared with each other are timed interleaved (one run of each in turn, the order rotating
    every round), so drift (thermal, other processes) hits them alike;
  * each runtime is timed in its own phase, and onnxruntime's pool threads do not spin when idle: spinning
    workers would otherwise steal cores from the other runtime's, or the next session's, runs;
  * inputs are prepared once; ONNX files are static-shape exports of the fused model (FP32 on CPU).
On CUDA, onnxruntime runs with its CUDA provider and, when installed, its TensorRT provider (backend
'tensorrt', FP16 with --half); their times include copying the input from host memory, PyTorch's do not.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from engine.exporter import export_onnx, one_line, prepare
from models.loader import load_model
from utils.config import defaults
from utils.flops import count_params, gflops
from utils.files import write_json
from utils.general import LOGGER, check_imgsz, increment_path, select_device


def resolve_threads(threads: int | None = None) -> int:
    return int(threads) if threads and threads > 0 else torch.get_num_threads()


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


def ort_session(onnx_file: str | Path, threads: int, cuda: bool = False, tensorrt: bool = False, fp16: bool = False):
    """An onnxruntime session for timing: CPU, CUDA, or TensorRT (engine built on the first run; FP16 kernels
    allowed with fp16) with CUDA and CPU as fallbacks."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # idle pool threads must not spin: with sessions timed interleaved, one session's spinning workers steal
    # the cores from the next one's run (yolov5n at 640, 2 threads: 76 ms per image spinning, 32 ms not)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda or tensorrt else ["CPUExecutionProvider"]
    if tensorrt:
        providers.insert(0, ("TensorrtExecutionProvider", {"trt_fp16_enable": bool(fp16)}))
    return ort.InferenceSession(str(onnx_file), so, providers=providers)


def ort_provider_available(name: str) -> bool:
    """name: 'CUDA' or 'Tensorrt' (onnxruntime-gpu builds; TensorRT also needs its libraries at run time)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return f"{name}ExecutionProvider" in ort.get_available_providers()


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                     sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn: warm-up for all, then `repeats` rounds of one call each, order rotating."""
    keys = list(fns)
    for k in keys:
        for _ in range(warmup):
            fns[k]()
        if sync:
            sync()
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            if sync:
                sync()
            times[k].append(time.perf_counter() - t)
    return times


def _stats(times: list[float], batch: int) -> dict:
    ms = sorted(t * 1e3 for t in times)
    med = statistics.median(ms)
    q = lambda p: ms[min(len(ms) - 1, int(p * (len(ms) - 1) + 0.5))]  # noqa: E731
    return {"ms_per_image": med / batch, "ms_per_batch": med, "p10_ms_per_batch": q(0.1),
            "p90_ms_per_batch": q(0.9), "runs": len(ms)}


def _onnx_files(models: dict[str, nn.Module], shape: tuple, folder: Path) -> dict[str, Path]:
    files = {}
    for i, (name, m) in enumerate(models.items()):
        f = folder / f"model{i}_batch{shape[0]}.onnx"
        export_onnx(prepare(m, "cpu"), torch.zeros(shape), f, opset=17)
        files[name] = f
    return files


def compare_latency(models: dict[str, nn.Module], imgsz: int, batch_sizes=(1,), backends=("onnxruntime", "pytorch"),
                    device: str | torch.device = "cpu", half: bool = False, threads: int | None = None,
                    warmup: int | None = None, repeats: int | None = None) -> list[dict]:
    """Latency rows for several models measured side by side (interleaved) per backend, device and batch.

    backends: 'onnxruntime', 'pytorch' and/or 'tensorrt' (onnxruntime's TensorRT provider: CUDA only). CPU is
    always measured; with a CUDA `device` the same backends are measured on CUDA too (PyTorch and TensorRT in FP16
    if `half`; onnxruntime only with its CUDA provider installed, TensorRT with its provider).
    Returns [{model, backend, device, batch, threads, ms_per_image, ...}].
    """
    d = defaults("export")
    threads = resolve_threads(threads or d["speed_threads"])
    warmup = d["speed_warmup"] if warmup is None else warmup
    repeats = d["speed_repeats"] if repeats is None else repeats
    device = select_device(device)
    if half and device.type != "cuda":
        LOGGER.warning("--half: FP16 inference needs a CUDA device (--device 0); timing FP32 on CPU")
    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="yoloc_speed_") as tmp:
        for bs in batch_sizes:
            x = torch.rand(bs, 3, imgsz, imgsz, generator=g)
            for dev in devices:
                cuda = dev.type == "cuda"
                for backend in backends:
                    if backend == "pytorch":
                        fp16 = half and cuda
                        nets = {k: prepare(m, dev, fp16) for k, m in models.items()}
                        xi = x.to(dev).half() if fp16 else x.to(dev)

                        def call(net, xi=xi):
                            with torch.no_grad():
                                return net(xi)

                        fns = {k: (lambda n=n: call(n)) for k, n in nets.items()}
                        sync = torch.cuda.synchronize if cuda else None
                        prec = "fp16" if fp16 else "fp32"
                    elif backend in ("onnxruntime", "tensorrt"):
                        trt = backend == "tensorrt"
                        if trt and not cuda:
                            continue  # TensorRT is a CUDA backend
                        provider = "Tensorrt" if trt else "CUDA"
                        if cuda and not ort_provider_available(provider):
                            LOGGER.info(f"onnxruntime {provider}: skipped (no {provider}ExecutionProvider; install "
                                        "onnxruntime-gpu" + (" and TensorRT)" if trt else ")"))
                            continue
                        files = _onnx_files(models, tuple(x.shape), Path(tmp))
                        sessions = {k: ort_session(f, threads, cuda, trt, half) for k, f in files.items()}
                        if trt and any(s.get_providers()[0] != "TensorrtExecutionProvider" for s in sessions.values()):
                            LOGGER.warning("onnxruntime TensorRT: skipped (the provider did not load; its TensorRT "
                                           "libraries are missing?)")
                            continue
                        feed = x.numpy()
                        fns = {k: (lambda s=s, feed=feed: s.run(None, {s.get_inputs()[0].name: feed})) for k, s in sessions.items()}
                        sync, prec = None, "fp16" if trt and half else "fp32"
                    else:
                        raise ValueError(f"unknown backend '{backend}'")
                    times = time_interleaved(fns, warmup, repeats, sync)
                    for k in models:
                        rows.append({"model": k, "backend": backend, "device": dev.type, "precision": prec,
                                     "batch": bs, "threads": threads if not cuda else None, **_stats(times[k], bs)})
                    del fns
    return rows


def format_rows(rows: list[dict], title: str = "") -> str:
    head = f"{'model':28s}{'backend':13s}{'device':8s}{'batch':>6s}{'ms/img':>10s}{'img/s':>9s}{'p10-p90 ms/batch':>20s}"
    lines = ([title] if title else []) + [head]
    for r in rows:
        spread = f"{r['p10_ms_per_batch']:.1f}-{r['p90_ms_per_batch']:.1f}"
        lines.append(f"{str(r['model'])[:27]:28s}{r['backend']:13s}{r['device'] + ('/' + r['precision'] if r['precision'] == 'fp16' else ''):8s}"
                     f"{r['batch']:6d}{r['ms_per_image']:10.2f}{1e3 / r['ms_per_image']:9.1f}{spread:>20s}")
    return "\n".join(lines)


def environment(threads: int) -> dict:
    try:
        import onnxruntime as ort

        ort_v = ort.__version__
    except ImportError:
        ort_v = None
    return {"torch": torch.__version__, "onnxruntime": ort_v, "threads": threads, "cpu": platform.processor() or
            platform.machine(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_speed(weights, imgsz=640, batch_size=None, device="", half=False, project="runs/val", name="exp",
              exist_ok=False, trust_checkpoint=False, model=None, threads=None, warmup=None, repeats=None, **_):
    """val.py --task speed: latency of one model at batch 1 and a larger batch, as a table and speed.json."""
    d = defaults("export")
    if model is None:
        model = load_model(weights, trust=trust_checkpoint)
    stride = int(max(int(model.stride.max()), 32))
    imgsz = check_imgsz(int(imgsz), stride)  # val.py --task speed: one warning when the size changes
    batches = sorted({1, int(batch_size or d["speed_batch"])})
    threads = resolve_threads(threads or d["speed_threads"])
    warmup = d["speed_warmup"] if warmup is None else warmup
    repeats = d["speed_repeats"] if repeats is None else repeats
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    name_ = Path(str(weights)).name
    rows = compare_latency({name_: model}, imgsz, batches, ("pytorch", "onnxruntime", "tensorrt"), device, half,
                           threads, warmup, repeats)
    result = {
        "weights": str(weights),
        "imgsz": imgsz,
        "params": count_params(model),
        "gflops": gflops(model, imgsz),
        "warmup": warmup,
        "repeats": repeats,
        "environment": environment(threads),
        "results": rows,
    }
    title = (f"Latency of {name_} at {imgsz}x{imgsz}: median per image after {warmup} warm-up runs, {repeats} runs, "
             f"{threads} CPU threads for PyTorch and onnxruntime")
    LOGGER.info(format_rows(rows, title))
    write_json(result, save_dir / "speed.json")
    LOGGER.info(f"Results saved to {save_dir / 'speed.json'}")
    return result, save_dir


def compress_latency(base: nn.Module, pruned: nn.Module, imgsz: int, flops_ratio: float | None = None) -> dict:
    """compress.py: base vs pruned onnxruntime CPU latency at batch 1, side by side, next to the FLOPs factor.
    Never fails the run: a problem (e.g. an op the ONNX exporter refuses) gives {'skipped': reason}."""
    d = defaults("export")
    if not d.get("compress_latency", True):
        return {"skipped": "disabled (export.compress_latency in cfg/default.yaml)"}
    try:
        stride = int(max(int(base.stride.max()), 32))
        imgsz = (int(imgsz) + stride - 1) // stride * stride
        rows = compare_latency({"base": _cpu_copy(base), "pruned": _cpu_copy(pruned)}, imgsz, (1,), ("onnxruntime",),
                               "cpu", repeats=d["compress_repeats"])
    except Exception as e:  # latency is a report extra: the pruned model is already saved
        LOGGER.warning(f"latency: skipped ({one_line(e)})")
        return {"skipped": one_line(e)}
    b, p = (next(r for r in rows if r["model"] == k) for k in ("base", "pruned"))
    speedup = b["ms_per_image"] / p["ms_per_image"]
    factor = 1 / flops_ratio if flops_ratio else None
    out = {
        "backend": "onnxruntime", "device": "cpu", "batch": 1, "imgsz": imgsz, "threads": b["threads"],
        "repeats": b["runs"], "base_ms": b["ms_per_image"], "pruned_ms": p["ms_per_image"], "speedup": speedup,
        "flops_factor": factor, "speedup_over_flops_factor": speedup / factor if factor else None,
    }
    LOGGER.info(
        f"latency (onnxruntime CPU, batch 1, {imgsz}x{imgsz}, {b['threads']} threads, median of {b['runs']}): "
        f"base {b['ms_per_image']:.2f} ms, pruned {p['ms_per_image']:.2f} ms, speedup x{speedup:.2f}"
        + (f" for FLOPs /{factor:.2f} (speedup / FLOPs factor {speedup / factor:.2f})" if factor else "")
    )
    return out


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).float().cpu().eval()


__all__ = ["compare_latency", "compress_latency", "format_rows", "run_speed", "time_interleaved"]
