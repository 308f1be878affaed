# AGPL-3.0 License
"""Export full and pruned detectors (every family) to ONNX, TorchScript, OpenVINO and TensorRT, FP32, FP16 or
post-training INT8, and check the files.

A pruned checkpoint is an ordinary checkpoint whose convs are narrower, so the same path serves both:
load -> fuse -> wrap (first output only) -> trace/export -> write atomically -> run the file and compare with
PyTorch on inputs other than the one traced (models.export). OpenVINO and TensorRT are built from the ONNX
file (engine.export_openvino, models.export_tensorrt); --int8 quantizes ONNX with onnxruntime and OpenVINO with NNCF,
the decode in FP32 (engine.quantize). INT8 files are not compared elementwise (they are judged by the mAP they keep:
val.py --weights <file>); the table shows their max difference for information.

Outputs: anchor-based (YOLOv5/YOLOv7) `(batch, anchors, 5 + nc)` decoded xywh+obj+cls, ultralytics
`(batch, 4 + nc, anchors)`, exactly what the PyTorch model returns first in eval mode. Every file carries the
metadata engine.backends needs to run it without the .pt (names, stride, imgsz, batch, family, output layout, task).
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.backends import load_exported
from engine.export_openvino import export_openvino, verify_openvino
from models.export_tensorrt import check_engine, export_engine
from engine.quantize import calibration_batches, quantize_onnx
from models.export import (
    MIN_OPSET,
    ExportError,
    ExportWrapper,
    as_outputs,
    check_inputs,
    compare,
    export_onnx,
    export_torchscript,
    max_opset,
    one_line,
    prepare,
    simplifier,
    verify_onnx,
    verify_torchscript,
)
from models.loader import is_anchor_based, load_model, model_family, model_task
from utils import runtimes
from utils.flops import count_params, gflops
from utils.general import LOGGER, UsageError, increment_path, select_device

__all__ = ("FORMATS", "ExportError", "ExportWrapper", "export_onnx", "one_line", "prepare", "run")

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": "_openvino_model", "engine": ".engine"}
INT8_FORMATS = ("onnx", "openvino")


def _writable(folder: Path) -> bool:
    # permission bits that deny every write count as read-only even for root (whom os.access lets write anywhere)
    if not folder.is_dir() or not os.access(folder, os.W_OK) or not folder.stat().st_mode & 0o222:
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            return True
    except OSError:
        return False


def output_files(weights: str | Path, include: list[str], project: str | Path, name: str,
                 exist_ok: bool, tag: str = "") -> dict[str, Path]:
    """Next to the weights like YOLOv5 (yolov5n.pt -> yolov5n.onnx), or into project/name when the weights
    are a yaml or their folder is not writable; `tag` goes after the stem (`_int8`). Never the input file itself."""
    p = Path(weights)
    folder = p.parent if p.suffix not in (".yaml", ".yml") and p.is_file() and _writable(p.parent) else None
    stem = p.stem + tag
    files = {f: (folder / f"{stem}{FORMATS[f]}") if folder else None for f in include}
    if folder is None or any(f.resolve() == p.resolve() for f in files.values()):
        run_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        files = {f: run_dir / f"{stem}{FORMATS[f]}" for f in include}
    return files


def check_include(include) -> list[str]:
    fmts = []
    for f in [include] if isinstance(include, str) else include:
        for x in str(f).replace(",", " ").split():
            x = x.lower().lstrip(".")
            if x not in FORMATS:
                raise UsageError(f"unknown --include '{x}': choose from {', '.join(FORMATS)}")
            if x not in fmts:
                fmts.append(x)
    if not fmts:
        raise UsageError(f"--include needs at least one format: {', '.join(FORMATS)}")
    return fmts


def check_options(fmts: list[str], device: torch.device, half: bool, int8: bool, data) -> None:
    """One line per unusable combination, before anything is loaded or written."""
    if half and int8:
        raise UsageError("--half and --int8 exclude each other: choose one precision")
    if int8:
        if not data:
            raise UsageError("--int8 needs calibration images: pass --data your.yaml (e.g. --data coco128.yaml)")
        bad = [f for f in fmts if f not in INT8_FORMATS + ("engine",)]
        if bad:
            raise UsageError(f"--int8 applies to {' and '.join(INT8_FORMATS)}, not {' '.join(bad)}: "
                             "export those in a separate command without --int8")
    if "engine" in fmts:
        check_engine(device, int8)
    if half and device.type != "cuda" and any(f != "openvino" for f in fmts):
        raise UsageError("--half (FP16) export needs a CUDA device (--device 0) except for --include openvino "
                         "(FP16 weights); on CPU export FP32 without --half")
    if "openvino" in fmts:
        runtimes.openvino()
        if int8:
            runtimes.nncf()


def _imgsz(imgsz, stride: int) -> tuple[int, int]:
    s = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    if len(s) == 1:
        s = s * 2
    if len(s) != 2 or any(int(v) <= 0 for v in s):
        raise UsageError(f"--imgsz takes one or two positive sizes (h w), got {imgsz}")
    h, w = ((int(v) + stride - 1) // stride * stride for v in s)
    if (h, w) != (int(s[0]), int(s[1])):
        LOGGER.info(f"--imgsz {s[0]} {s[1]} rounded up to {h} {w} (a multiple of the max stride {stride})")
    return h, w


def metadata(model, weights, family: str, hw: tuple[int, int], batch: int, dynamic: bool, precision: str,
             stride: int) -> dict:
    return {
        "description": f"{Path(str(weights)).name} exported by yolo-compress",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": model_task(model),
        "family": family,
        "stride": stride,
        "names": {int(k): v for k, v in model.names.items()},
        "nc": int(model.nc),
        "imgsz": list(hw),
        "batch": int(batch),
        "dynamic": bool(dynamic),
        "precision": precision,
        "half": precision == "fp16",
        "layout": "anchors" if is_anchor_based(model) else "ultralytics",
        "output": "(batch, anchors, 5+nc) xywh,obj,cls" if is_anchor_based(model) else "(batch, 4+nc, anchors) xywh,cls"
        + (", mask coefficients; output1 (batch, masks, h/4, w/4) mask protos" if model_task(model) == "segment" else ""),
        "params": count_params(model),
        "gflops": gflops(model, max(hw)),
    }


def run(
    weights,
    include=("onnx", "torchscript"),
    imgsz=640,
    batch_size=1,
    device="",
    half=False,
    int8=False,
    data=None,
    int8_images=300,
    dynamic=False,
    simplify=False,
    opset=17,
    project="runs/export",
    name="exp",
    exist_ok=False,
    trust_checkpoint=False,
    check=True,
    workers=2,
    model=None,
    **_,
) -> dict[str, dict]:
    """Export `weights` (or `model`) to each format in `include`; returns {format: {file, max_diff, ...}}."""
    t0 = time.time()
    fmts = check_include(include)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if not MIN_OPSET <= int(opset) <= max_opset():
        raise UsageError(f"--opset {opset} not supported: choose {MIN_OPSET}..{max_opset()} (torch's ONNX exporter)")
    if simplify and simplifier() is None:
        raise UsageError("--simplify needs onnxslim or onnxsim and neither is installed "
                         "(pip install onnxslim), or export without --simplify")
    device = select_device(device)
    check_options(fmts, device, half, int8, data)
    if model is None:
        model = load_model(weights, trust=trust_checkpoint)
    task = model_task(model)
    if task != "detect" and (int8 or set(fmts) - {"onnx", "torchscript"}):
        raise UsageError(f"a {task} model exports to onnx and torchscript (FP32/FP16) only: drop "
                         f"{'--int8' if int8 else '--include ' + ' '.join(sorted(set(fmts) - {'onnx', 'torchscript'}))}")
    stride = int(max(int(model.stride.max()), 32))
    h, w_ = _imgsz(imgsz, stride)
    precision = "int8" if int8 else "fp16" if half else "fp32"
    files = output_files(weights, fmts, project, name, exist_ok, tag="_int8" if int8 else "")
    family = model_family(model)
    meta = metadata(model, weights, family, (h, w_), batch_size, dynamic, precision, stride)
    calib = calibration_batches(data, (h, w_), batch_size, int8_images, workers) if int8 else None
    torch_half = half and device.type == "cuda"
    im = torch.zeros(batch_size, 3, h, w_, device=device)
    LOGGER.info(f"PyTorch: starting from '{weights}' ({family}) with input shape {tuple(im.shape)} "
                f"{precision.upper()} on {device}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="export_") as tmp:
        fp32 = Fp32Onnx(model, im.float(), Path(tmp) / "fp32.onnx", int(opset), dynamic, simplify, meta)
        for fmt in fmts:
            t = time.time()
            fmt_half = torch_half and fmt in ("onnx", "torchscript")  # OpenVINO, TensorRT: from the FP32 ONNX
            wrapped = prepare(model, device, fmt_half, dynamic, fmt)
            x = im.half() if fmt_half else im
            with torch.no_grad():
                shapes = [tuple(y.shape) for y in as_outputs(wrapped(x))]
                out_shape = shapes[0] if len(shapes) == 1 else shapes
            r = export_one(fmt, wrapped, x, files[fmt], fp32, meta, half, calib)
            r.update(file=str(files[fmt]), output_shape=list(out_shape), precision=precision,
                     mb=_size_mb(files[fmt]))
            if check:
                r.update(check_file(fmt, files[fmt], wrapped, check_inputs(x, dynamic, stride), precision))
            r["seconds"] = time.time() - t
            results[fmt] = r
    LOGGER.info(format_results(results, time.time() - t0))
    return results


class Fp32Onnx:
    """The FP32 ONNX file OpenVINO, TensorRT and INT8 start from, exported once on first use."""

    def __init__(self, model, im: torch.Tensor, file: Path, opset: int, dynamic: bool, simplify: bool, meta: dict):
        self.model, self.im, self.file, self.args = model, im, file, (opset, dynamic, simplify, meta)

    def __call__(self) -> Path:
        if not self.file.exists():
            opset, dynamic, simplify, meta = self.args
            export_onnx(prepare(self.model, self.im.device, False, dynamic, "onnx"), self.im, self.file, opset,
                        dynamic, simplify, meta)
        return self.file


def export_one(fmt: str, wrapped: ExportWrapper, x: torch.Tensor, file: Path, fp32: Fp32Onnx, meta: dict,
               half: bool, calib) -> dict:
    """Write one format; returns extra result fields (INT8: how many nodes stayed FP32, INT8 constants)."""
    opset, dynamic, simplify, _ = fp32.args
    if fmt == "torchscript":
        export_torchscript(wrapped, x, file, meta)
        return {}
    if fmt == "openvino":
        return export_openvino(fp32(), file, meta, half=half, calibration=calib)[1]
    if fmt == "engine":
        export_engine(fp32(), file, meta, half, dynamic, tuple(x.shape))
        return {}
    if calib is None:
        export_onnx(wrapped, x, file, opset, dynamic, simplify, meta)
        return {}
    try:
        return {"fp32_nodes": len(quantize_onnx(fp32(), file, calib))}
    except Exception as e:
        raise ExportError(f"ONNX INT8 quantization failed: {one_line(e)}") from e


def _size_mb(p: Path) -> float:
    p = Path(p)
    return (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size) / 1e6


def check_file(fmt: str, file: Path, wrapped: ExportWrapper, inputs: list[torch.Tensor], precision: str) -> dict:
    """Compare the file's outputs with PyTorch's (INT8: the max difference only, for information)."""
    if precision == "int8":
        return {"max_diff": int8_diff(fmt, file, wrapped, inputs[0]), "checked_with": "not compared (INT8)"}
    if fmt == "onnx":
        d, provider = verify_onnx(file, wrapped, inputs)
        r = {"max_diff": d, "checked_with": f"onnxruntime {provider}"}
    elif fmt == "torchscript":
        r = {"max_diff": verify_torchscript(file, wrapped, inputs), "checked_with": "torch.jit.load"}
    elif fmt == "openvino":
        r = {"max_diff": verify_openvino(file, wrapped, inputs, precision), "checked_with": "OpenVINO CPU"}
    else:
        return {}
    return {**r, "checked_shapes": [list(i.shape) for i in inputs]}


@torch.no_grad()
def int8_diff(fmt: str, file: Path, wrapped: ExportWrapper, x: torch.Tensor) -> float:
    ref = wrapped(x).float().cpu().numpy()
    out = load_exported(file)(x.float().cpu()).numpy()
    ok, d = compare(out, ref)
    if not np.isfinite(out).all() or out.shape != ref.shape:
        raise ExportError(f"{Path(file).name}: the INT8 model's output {out.shape} is not finite or not {ref.shape}")
    return d


def format_results(results: dict, seconds: float) -> str:
    folders = sorted({str(Path(r["file"]).parent.resolve()) for r in results.values()})
    lines = [f"Export complete ({seconds:.1f}s), results saved to {', '.join(folders)}"]
    for fmt, r in results.items():
        if "max_diff" not in r:
            chk = "not checked"
        elif r["precision"] == "int8":
            chk = f"INT8: max |diff| {r['max_diff']:.3g} to PyTorch, not a check (judge it by val.py's mAP)"
        else:
            chk = (f"matches PyTorch (max |diff| {r['max_diff']:.2g}, {r['checked_with']}, inputs "
                   f"{' '.join('x'.join(map(str, s)) for s in r['checked_shapes'])})")
        lines.append(f"  {fmt:12s}{r['file']}  {r['mb']:.1f} MB  output {tuple(r['output_shape'])}  {chk}")
    return "\n".join(lines)
