# AGPL-3.0 License
"""Post-training static INT8 of exported detectors: OpenVINO IR through NNCF (`nncf.quantize`), ONNX through
onnxruntime (`quantize_static`, QDQ, per-channel INT8 weights, UINT8 activations). Nothing here quantizes by itself.

What stays in floating point: every node downstream of the head's output convs (the decode: sigmoid, grid and
anchor arithmetic, DFL, and the final Concat). That Concat joins pixel-scale boxes (0..imgsz) with 0..1 scores in
one tensor; one INT8 scale for both rounds every score to zero or to one step of the box range, which is what cost
a plain static INT8 of the whole graph most of its detections. The head convs themselves are quantized (their
inputs and weights), so nearly all the arithmetic still runs in INT8.

models.export_graph.decode_tail finds those nodes in any graph (ONNX or OpenVINO, every family, full or pruned).

Calibration images: the data yaml's train split (YOLOv5's export uses train; the scored split stays unseen), else
val; letterboxed to the export's square shape, RGB, 0..1, in batches of the export's batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from data.datasets import build_val_loader, check_dataset
from models.export_graph import decode_tail, onnx_nodes, openvino_nodes
from utils import runtimes
from utils.general import LOGGER, UsageError


def calibration_batches(data: str, imgsz: tuple[int, int], batch: int, n_images: int,
                        workers: int = 2) -> list[np.ndarray]:
    """Up to n_images calibration images from the data yaml as float32 (batch, 3, h, w) arrays, 0..1 RGB."""
    if not data:
        raise UsageError("--int8 needs calibration images: pass --data your.yaml (its train or val images)")
    h, w = imgsz
    if h != w:
        raise UsageError(f"--int8 calibrates at a square size; export with one --imgsz (got {h} {w})")
    d = check_dataset(data, splits=())
    split = "train" if d.get("train") else "val"
    d = check_dataset(data, splits=(split,))
    loader = build_val_loader(d, split, h, batch, 32, workers, rect=False, pad=0.0)
    out, seen = [], 0
    for b in loader:
        im = b["img"].numpy().astype(np.float32) / 255
        if im.shape[0] != batch:  # a fixed-batch export takes whole batches only
            continue
        out.append(im)
        seen += batch
        if seen >= n_images:
            break
    if not out:
        raise UsageError(f"--int8: no calibration batch of {batch} images in {d['yaml_file']} '{split}'; "
                         "lower --batch-size or add images")
    LOGGER.info(f"INT8 calibration: {seen} images from {d['yaml_file']} '{split}' at {h}x{w}")
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self.name, self.batches = name, list(batches)
        self.it: Iterator = iter(self.batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}

    def rewind(self):
        self.it = iter(self.batches)


def quantize_onnx(src: Path, dst: Path, batches: list[np.ndarray]) -> list[str]:
    """Static INT8 (QDQ, per-channel signed INT8 weights, unsigned 8-bit activations, MinMax calibration) of the
    FP32 ONNX file src into dst, the decode tail in FP32. Returns the names of the nodes kept in FP32.

    U8S8 rather than onnxruntime's S8S8 default: its x86 CPU kernels (VNNI / VPMADDUBSW) take unsigned activations
    with signed weights; S8S8 files ran slower than FP32 there (docs/benchmarks/deploy.md)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(src))
    keep = decode_tail(onnx_nodes(proto))
    quantize_static(str(src), str(dst), _Reader(proto.graph.input[0].name, batches),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax)
    return keep


def quantize_openvino(model, batches: list[np.ndarray]):
    """nncf.quantize of an ov.Model (mixed preset: symmetric weights, asymmetric activations), the decode tail
    ignored. Returns (quantized ov.Model, names kept in floating point)."""
    nncf = runtimes.nncf()
    nncf.set_log_level(logging.WARNING)  # its per-node INFO lines would bury the export table
    keep = decode_tail(openvino_nodes(model))
    q = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED,
                      subset_size=sum(len(b) for b in batches),
                      ignored_scope=nncf.IgnoredScope(names=keep, validate=False))
    return q, keep


def int8_weights(model) -> int:
    """Count of INT8 / UINT8 constants in an ov.Model (the IR holds int8 weights when > 0)."""
    return sum(1 for op in model.get_ordered_ops()
               if op.get_type_name() == "Constant" and str(op.get_element_type()) in ("<Type: 'int8_t'>",
                                                                                      "<Type: 'uint8_t'>", "i8", "u8"))
