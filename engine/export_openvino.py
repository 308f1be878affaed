# AGPL-3.0 License
"""OpenVINO IR export: `<stem>_openvino_model/` holding `<stem>.xml`, `<stem>.bin` and `metadata.yaml` (the layout
YOLOv5's and ultralytics' exporters write), FP32, FP16 weights (--half) or INT8 (--int8, engine.quantize).

The IR is read from the ONNX file this export writes (OpenVINO's runtime ONNX reader, `Core.read_model`) and saved
with `openvino.save_model`; neither sends telemetry (utils.runtimes). The folder is written under a temporary name
and renamed into place, so a reader never sees half an IR.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from engine.quantize import int8_weights, quantize_openvino
from models.export import TOLERANCE, ExportError, ExportWrapper, compare, one_line
from utils import runtimes
from utils.general import UsageError

METADATA = "metadata.yaml"


def replace_dir(tmp: Path, folder: Path) -> Path:
    """Move the finished folder tmp to folder; a former folder of that name is removed only afterwards."""
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def export_openvino(onnx_file: Path, folder: Path, metadata: dict, half: bool = False,
                    calibration: list[np.ndarray] | None = None) -> tuple[Path, dict]:
    """IR folder from the FP32 ONNX file; INT8 when calibration batches are given. Returns (folder, info)."""
    ov = runtimes.openvino()
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    info = {}
    try:
        model = ov_core().read_model(str(onnx_file))
        if calibration is not None:
            model, keep = quantize_openvino(model, calibration)
            info = {"fp32_nodes": len(keep), "int8_constants": int8_weights(model)}
            if not info["int8_constants"]:
                raise ExportError("NNCF left no INT8 weights in the IR: the model was not quantized")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        stem = folder.name.removesuffix("_openvino_model")
        ov.save_model(model, str(tmp / f"{stem}.xml"), compress_to_fp16=half)
        (tmp / METADATA).write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True))
        replace_dir(tmp, folder)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (ExportError, UsageError)):
            raise
        raise ExportError(f"OpenVINO export failed: {one_line(e)}") from e
    return folder, info


def ir_file(folder: Path) -> Path:
    xml = sorted(Path(folder).glob("*.xml"))
    if not xml:
        raise FileNotFoundError(f"{folder}: no OpenVINO .xml model in this folder (export with --include openvino)")
    return xml[0]


def ov_core():
    """The process's one OpenVINO Core (utils.runtimes.ov_core)."""
    return runtimes.ov_core()


def compile_ir(folder: Path, threads: int = 0):
    """The IR compiled for OpenVINO's CPU plugin (threads 0: its default), latency hint, FP32 arithmetic where
    the IR is not INT8: on CPUs with BF16 support the plugin would otherwise run FP32 models in BF16."""
    core = ov_core()
    cfg = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    cfg.update(PERFORMANCE_HINT="LATENCY", INFERENCE_PRECISION_HINT="f32")
    return core.compile_model(core.read_model(str(ir_file(folder))), "CPU", cfg)


@torch.no_grad()
def verify_openvino(folder: Path, w: ExportWrapper, inputs: list[torch.Tensor], precision: str = "fp32") -> float:
    """Run the IR on OpenVINO CPU on each input and compare with PyTorch (FP32 weights or FP16 weights)."""
    compiled = compile_ir(folder)
    worst = 0.0
    for x in inputs:
        ref = w(x.float()).float().cpu().numpy()
        out = compiled(x.float().cpu().numpy())[compiled.output(0)]
        ok, d = compare(out, ref, precision)
        if not ok:
            raise ExportError(
                f"{Path(folder).name}: OpenVINO output {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)} on "
                f"input {tuple(x.shape)}: max |diff| {d:.3g} exceeds the tolerance {TOLERANCE[precision]}")
        worst = max(worst, d)
    return worst
