# AGPL-3.0 License
"""The ONNX and TorchScript writers and the output checks every exported file goes through (engine.exporter
orchestrates; engine.export_openvino, models.export_tensorrt and engine.quantize add the other formats).

Checks: the file is run (onnxruntime, torch.jit.load, OpenVINO) on inputs other than the one traced and compared
with PyTorch elementwise, |out - ref| <= atol + rtol |ref| (TOLERANCE per precision).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.loader import fuse_model, is_anchor_based, model_family, model_task
from utils.files import replace_file
from utils.general import UsageError

MIN_OPSET = 11  # Upsample/Resize and the ops the heads need; torch's legacy exporter knows 7..20
TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 5e-2)}  # (atol, rtol) per element


class ExportError(RuntimeError):
    """Export or its output check failed; the CLI prints the message as one line and exits 1."""


class ExportWrapper(nn.Module):
    """The detector with one output: the decoded predictions (what deployment consumes); a segmentation model
    with two, as ultralytics exports it: the decoded predictions (with the mask coefficients) and the mask protos."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs = 2 if model_task(model) == "segment" else 1

    def forward(self, x):
        y = self.model(x)
        if self.outputs == 2:
            return y[0], y[1]
        return y[0] if isinstance(y, (list, tuple)) else y


def as_outputs(y) -> list[torch.Tensor]:
    """An ExportWrapper's result as a list of its outputs."""
    return list(y) if isinstance(y, (list, tuple)) else [y]


def max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

        return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except ImportError:  # older torch: the legacy exporter is the only one and knows this many
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)


def simplifier() -> str | None:
    """The installed ONNX simplifier package, if any (never installed on the fly)."""
    for name in ("onnxslim", "onnxsim"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def prepare(model: nn.Module, device: torch.device | str = "cpu", half: bool = False, dynamic: bool = False,
            fmt: str = "onnx") -> ExportWrapper:
    """A fused, frozen copy of `model` wrapped to return its first output; the input model is untouched.

    Ultralytics heads get the flags their own exporter sets (export mode returns the decoded tensor only;
    dynamic recomputes the anchor points from the input shape instead of caching them as constants).
    """
    m = fuse_model(copy.deepcopy(model).float()).eval()
    if model_family(m) == "ultralytics":
        from ultralytics.nn.modules.head import Detect as UDetect

        for mod in m.modules():
            if isinstance(mod, UDetect):
                mod.export, mod.format, mod.dynamic, mod.shape = True, fmt, dynamic, None
    for p in m.parameters():
        p.requires_grad_(False)
    w = ExportWrapper(m).to(device).eval()
    return w.half() if half else w


def output_names_axes(model: nn.Module, dynamic: bool):
    if not dynamic:
        return None
    out = {0: "batch", 1: "anchors"} if is_anchor_based(inner_model(model)) else {0: "batch", 2: "anchors"}
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": out}
    if getattr(model, "outputs", 1) == 2:  # segmentation: the mask protos
        axes["output1"] = {0: "batch", 2: "mask_height", 3: "mask_width"}
    return axes


def inner_model(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, ExportWrapper) else model


def tmp_for(file: Path) -> Path:
    return file.with_name(f".{file.name}.{os.getpid()}.tmp")


def replace_tmp(tmp: Path, file: Path) -> None:
    # atomic on one filesystem (readers see the old file or the new one, never half); mode per the umask
    replace_file(tmp, file)


@contextmanager
def written_atomically(file: Path, what: str):
    """Yields a temporary path beside `file` to write; on success it replaces `file` (atomic, see replace_tmp).
    Any failure removes the temporary file and is raised as ExportError('<what> export failed: ...'); UsageError
    and ExportError pass unchanged."""
    tmp = tmp_for(file)
    try:
        yield tmp
        replace_tmp(tmp, file)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (UsageError, ExportError)):
            raise
        raise ExportError(f"{what} export failed: {one_line(e)}") from e


def export_onnx(w: ExportWrapper, im: torch.Tensor, file: Path, opset: int = 17, dynamic: bool = False,
                simplify: bool = False, metadata: dict | None = None) -> Path:
    """Trace w on im into an ONNX file (written atomically); returns the path."""
    import onnx

    file = Path(file)
    with written_atomically(file, "ONNX") as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about python floats from tensors (constants here)
            torch.onnx.export(
                w,
                im,
                str(tmp),
                dynamo=False,  # the dynamo exporter needs onnxscript; the tracer covers these models
                opset_version=opset,
                do_constant_folding=True,
                input_names=["images"],
                output_names=["output0", "output1"][: w.outputs],
                dynamic_axes=output_names_axes(w, dynamic),
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        if simplify:
            proto = _simplify(proto)
        for k, v in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(k), v if isinstance(v, str) else json.dumps(v)
        onnx.save(proto, str(tmp))
    return file


def _simplify(proto):
    name = simplifier()
    if name == "onnxslim":
        import onnxslim

        return onnxslim.slim(proto)
    if name == "onnxsim":
        import onnxsim

        proto, ok = onnxsim.simplify(proto)
        if not ok:
            raise ExportError("onnxsim could not validate the simplified model; export again without --simplify")
        return proto
    raise UsageError("--simplify needs onnxslim or onnxsim and neither is installed (pip install onnxslim)")


def export_torchscript(w: ExportWrapper, im: torch.Tensor, file: Path, metadata: dict | None = None) -> Path:
    file = Path(file)
    with written_atomically(file, "TorchScript") as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ts = torch.jit.trace(w, im, strict=False, check_trace=False)
        extra = {"config.txt": json.dumps(metadata or {})}
        ts.save(str(tmp), _extra_files=extra)
    return file


def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"


def compare(out: np.ndarray, ref: np.ndarray, precision: str = "fp32") -> tuple[bool, float]:
    """Elementwise |out - ref| <= atol + rtol |ref| (boxes are pixels, scores 0..1). Returns (ok, max |diff|)."""
    out, ref = np.asarray(out, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    if out.shape != ref.shape:
        return False, float("inf")
    atol, rtol = TOLERANCE[precision]
    diff = np.abs(out - ref)
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref)))  # NaN anywhere fails
    return ok, float(diff.max()) if diff.size else 0.0


def check_inputs(im: torch.Tensor, dynamic: bool, stride: int) -> list[torch.Tensor]:
    """Inputs for the output check: random data of the traced shape, plus another batch and a non-square
    size when the file claims dynamic axes."""
    g = torch.Generator().manual_seed(0)
    b, c, h, w = im.shape
    shapes = [(b, c, h, w)] + ([(b + 1, c, h, w + stride)] if dynamic else [])
    return [torch.rand(s, generator=g).to(im.device, im.dtype) for s in shapes]


@torch.no_grad()
def verify_onnx(file: Path, w: ExportWrapper, inputs: list[torch.Tensor]) -> tuple[float, str]:
    """Run the ONNX file with onnxruntime on each input and compare with PyTorch. Returns (max |diff|, provider)."""
    import onnxruntime as ort

    half = inputs[0].dtype == torch.float16
    cuda = inputs[0].device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    if half and not cuda:
        raise ExportError(
            f"{file.name}: cannot check an FP16 ONNX file here: onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu) and its CPU provider does not run FP16 convolutions"
        )
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(file), so, providers=providers)
    worst = 0.0
    for x in inputs:
        outs = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})
        refs = [r.float().cpu().numpy() for r in as_outputs(w(x))]
        if len(outs) != len(refs):
            raise ExportError(f"{file.name}: onnxruntime gives {len(outs)} outputs, PyTorch {len(refs)}")
        for out, ref in zip(outs, refs):  # every output (a segmentation model's mask protos too)
            ok, d = compare(out, ref, "fp16" if half else "fp32")
            if not ok:
                raise ExportError(
                    f"{file.name}: onnxruntime output {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)} on "
                    f"input {tuple(x.shape)}: max |diff| {d:.3g} exceeds the tolerance "
                    f"{TOLERANCE['fp16' if half else 'fp32']}")
            worst = max(worst, d)
    return worst, sess.get_providers()[0].replace("ExecutionProvider", "")


@torch.no_grad()
def verify_torchscript(file: Path, w: ExportWrapper, inputs: list[torch.Tensor]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning: torch.jit is deprecated (still what TorchScript users load)
        ts = torch.jit.load(str(file), map_location=inputs[0].device)
    worst = 0.0
    for x in inputs:
        for ref, out in zip(as_outputs(w(x)), as_outputs(ts(x)), strict=True):
            ref, out = ref.float().cpu().numpy(), out.float().cpu().numpy()
            ok, d = compare(out, ref, "fp16" if x.dtype == torch.float16 else "fp32")
            if not ok:
                raise ExportError(
                    f"{file.name}: TorchScript output {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)} on "
                    f"input {tuple(x.shape)}: max |diff| {d:.3g}"
                )
            worst = max(worst, d)
    return worst


