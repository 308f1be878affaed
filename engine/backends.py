# AGPL-3.0 License
"""Exported detectors as first-class models (YOLOv5's DetectMultiBackend): `load_exported(path)` returns an
ExportedModel that val.py, detect.py and bench/latency.py use where they use the PyTorch model.

| file                        | runtime                                      | metadata read from            |
|-----------------------------|----------------------------------------------|-------------------------------|
| `x.onnx`                    | onnxruntime (CUDA provider on a GPU device)  | ONNX metadata_props           |
| `x_openvino_model/` (.xml)  | OpenVINO CPU                                 | metadata.yaml in the folder   |
| `x.torchscript`             | torch.jit.load                               | the `config.txt` extra file   |
| `x.engine`                  | TensorRT (CUDA)                              | the JSON before the engine    |

An ExportedModel takes what the PyTorch model takes (a float (batch, 3, h, w) tensor, 0..1) and returns what its
first output is (`(batch, anchors, 5 + nc)` for YOLOv5/YOLOv7, `(batch, 4 + nc, anchors)` for ultralytics), with
.names, .nc, .stride, .imgsz, .dynamic and the family's head class at .model[-1] (a parameterless stand-in), so
models.loader.model_family / is_anchor_based and both validation conventions treat it as the model it came from.
A fixed-batch file is fed its batch size (a smaller last chunk is padded and cut off again); a fixed-shape file
rejects other image sizes with one line (val.py and detect.py letterbox to its shape).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import yaml
from ultralytics.nn.modules.head import Detect as UltralyticsDetect

from engine.export_openvino import METADATA, compile_ir
from models.export_tensorrt import read_engine
from models.yolo import Detect, IDetect
from utils import runtimes
from utils.general import UsageError

SUFFIXES = {".onnx": "onnx", ".torchscript": "torchscript", ".engine": "engine"}
HEADS = {"yolov5": Detect, "yolov7": IDetect, "ultralytics": UltralyticsDetect}
REQUIRED = ("names", "stride", "imgsz", "family")


def export_format(weights) -> str | None:
    """'onnx', 'openvino', 'torchscript' or 'engine' for an exported model's path, else None (.pt, .yaml)."""
    p = Path(str(weights))
    if p.suffix in SUFFIXES:
        return SUFFIXES[p.suffix]
    if p.suffix == ".xml" or p.name.endswith("_openvino_model") or p.is_dir() and any(p.glob("*.xml")):
        return "openvino"
    return None


def is_exported(weights) -> bool:
    return export_format(weights) is not None


def refuse_exported(weights, cli: str) -> None:
    """For the commands that need the PyTorch model (compress.py, train.py): one line when given an exported file."""
    if is_exported(weights):
        raise UsageError(f"{cli} needs the PyTorch checkpoint (.pt): '{weights}' is an exported "
                         f"{export_format(weights)} model; pass the .pt it was exported from")


def _value(v):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def read_metadata(path: Path, fmt: str) -> dict:
    """The metadata export.py wrote into the file; raises UsageError when there is none."""
    if fmt == "onnx":
        meta = {p.key: _value(p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props}
    elif fmt == "openvino":
        folder = path.parent if path.suffix == ".xml" else path
        f = folder / METADATA
        meta = yaml.safe_load(f.read_text()) if f.is_file() else {}
    elif fmt == "torchscript":
        extra = {"config.txt": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = _value(extra["config.txt"] or "{}")
    else:
        meta = read_engine(path)[0]
    missing = [k for k in REQUIRED if k not in (meta or {})]
    if missing:
        raise UsageError(f"{path}: no {', '.join(missing)} in the file's metadata (not written by this toolkit's "
                         "export.py): export it again with python export.py --weights your.pt")
    if meta["family"] not in HEADS:
        raise UsageError(f"{path}: unknown family '{meta['family']}' in its metadata ({', '.join(HEADS)} expected)")
    return meta


def head_stand_in(family: str, nc: int, stride: int) -> nn.Module:
    """An instance of the family's head class without its layers (isinstance checks only)."""
    cls = HEADS[family]
    head = cls.__new__(cls)
    nn.Module.__init__(head)
    head.nc, head.stride = nc, torch.tensor([float(stride)])
    return head


class ExportedModel(nn.Module):
    """An exported file run by its runtime, shaped like the PyTorch detector (see the module docstring)."""

    def __init__(self, path: Path, fmt: str, meta: dict, runner):
        super().__init__()
        self.file, self.format, self.meta, self.runner = Path(path), fmt, meta, runner
        self.names = {int(k): str(v) for k, v in meta["names"].items()}
        self.nc = int(meta.get("nc", len(self.names)))
        self.stride = torch.tensor([float(meta["stride"])])
        self.imgsz = tuple(int(v) for v in meta["imgsz"])
        self.batch = int(meta.get("batch", 1))
        self.dynamic = bool(meta.get("dynamic", False))
        self.precision = str(meta.get("precision", "fp16" if meta.get("half") else "fp32"))
        self.family = meta["family"]
        self.end2end = False
        self.model = nn.Sequential(head_stand_in(self.family, self.nc, int(meta["stride"])))
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # .to(device) tells forward the device

    def extra_repr(self) -> str:
        return f"{self.file.name}, {self.format} {self.precision}, imgsz {self.imgsz}, batch {self.batch}"

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        if not self.dynamic and tuple(im.shape[2:]) != self.imgsz:
            raise UsageError(f"{self.file.name} was exported for {self.imgsz[0]}x{self.imgsz[1]} images, got "
                             f"{im.shape[2]}x{im.shape[3]}: letterbox to its shape, or export with --dynamic")
        n = im.shape[0]
        b = n if self.dynamic else self.batch
        outs = []
        for i in range(0, n, b):
            x = im[i:i + b]
            if x.shape[0] < b:
                x = torch.cat([x, x[-1:].expand(b - x.shape[0], *x.shape[1:])])
            outs.append(self.runner(x)[: min(b, n - i)])
        return torch.cat(outs).to(im.device).float()


def _onnx_runner(path: Path, device: torch.device, threads: int, half: bool):
    ort = runtimes.require("onnxruntime", "an ONNX model")
    cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as engine.latency: fair interleaving
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    sess = ort.InferenceSession(str(path), so, providers=(["CUDAExecutionProvider"] if cuda else [])
                                + ["CPUExecutionProvider"])
    name, dtype = sess.get_inputs()[0].name, np.float16 if half else np.float32
    return lambda x: torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy().astype(dtype)})[0])


def _openvino_runner(path: Path, threads: int):
    compiled = compile_ir(path.parent if path.suffix == ".xml" else path, threads)
    out = compiled.output(0)
    return lambda x: torch.from_numpy(np.asarray(compiled(x.detach().float().cpu().numpy())[out]))


def _torchscript_runner(path: Path, device: torch.device, half: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(path), map_location=device)
    ts.eval()

    def run(x):
        with torch.no_grad():
            y = ts(x.to(device, torch.float16 if half else torch.float32))
        return (y[0] if isinstance(y, (list, tuple)) else y).float()

    return run


def _engine_runner(path: Path, device: torch.device):
    if device.type != "cuda":
        raise UsageError(f"{path.name} is a TensorRT engine: it runs on a CUDA GPU only (--device 0)")
    trt = runtimes.tensorrt("a TensorRT engine")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(read_engine(path)[1])
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    half = engine.get_tensor_dtype(inp) == trt.DataType.HALF

    def run(x):
        x = x.to(device, torch.float16 if half else torch.float32).contiguous()
        ctx.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(ctx.get_tensor_shape(out)), device=device,
                        dtype=torch.float16 if engine.get_tensor_dtype(out) == trt.DataType.HALF else torch.float32)
        ctx.set_tensor_address(inp, x.data_ptr())
        ctx.set_tensor_address(out, y.data_ptr())
        ctx.execute_async_v3(torch.cuda.current_stream(device).cuda_stream)
        torch.cuda.current_stream(device).synchronize()
        return y.float()

    return run


def load_exported(weights, device: torch.device | str = "cpu", threads: int = 0) -> ExportedModel:
    """An exported file as an ExportedModel; threads: CPU threads of onnxruntime / OpenVINO (0: their default).

    Raises FileNotFoundError for a missing path, UsageError for a file without this toolkit's metadata or a
    runtime that is not installed (one line naming the package)."""
    path = Path(str(weights))
    fmt = export_format(path)
    if fmt is None:
        raise UsageError(f"{path}: not an exported model (.onnx, *_openvino_model/, .torchscript, .engine)")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    device = torch.device(device)
    meta = read_metadata(path, fmt)
    task = str(meta.get("task", "detect"))
    if task != "detect":  # its other outputs (e.g. mask protos) are not decoded here
        raise UsageError(f"{path}: an exported {task} model runs here as its .pt checkpoint only; or run the file "
                         f"with ultralytics: YOLO('{path}', task='{task}')")
    half = str(meta.get("precision")) == "fp16" or bool(meta.get("half"))
    if fmt == "onnx":
        runner = _onnx_runner(path, device, threads, half)
    elif fmt == "openvino":
        runner = _openvino_runner(path, threads)
    elif fmt == "torchscript":
        runner = _torchscript_runner(path, device, half)
    else:
        runner = _engine_runner(path, device)
    return ExportedModel(path, fmt, meta, runner).to(device)
