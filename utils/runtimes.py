# AGPL-3.0 License
"""Optional deployment runtimes (OpenVINO, NNCF, TensorRT), imported on demand with one clear line when absent,
and with their telemetry off; and timing on the CPU runtimes a latency target names (onnxruntime, OpenVINO).

`runtime_call` gives a callable running one inference of an ONNX model (a file, or its bytes) on a fixed input,
with `threads` intra-op threads: onnxruntime with sequential execution and idle threads not spinning (as
engine/latency.py times), OpenVINO's CPU plugin with INFERENCE_NUM_THREADS, the LATENCY hint and FP32 arithmetic.
`conv_graph` builds the one-layer ONNX models that prune/latency_table.py times.

Telemetry: `openvino.convert_model` (ovc) and NNCF report usage through openvino-telemetry unless the user opted
out. Nothing here calls ovc: ONNX files are read by the OpenVINO runtime (`Core.read_model`) and written with
`openvino.save_model`, neither of which reports. NNCF's own switch is the NNCF_CI environment variable (its
telemetry becomes a stub when set, nncf/telemetry/wrapper.py); it is set before NNCF is imported, and NNCF's
import runs with CI=true so that openvino-telemetry's consent check declines instead of creating a client id
(both tools pass disable_in_ci=True). tests/test_int8.py checks that an INT8 export opens no socket.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from utils.general import UsageError

RUNTIMES = ("onnxruntime", "openvino")

PIP_NAMES = {"openvino": "openvino", "nncf": "nncf", "tensorrt": "tensorrt", "onnxruntime": "onnxruntime"}


def available(package: str) -> bool:
    """Whether `package` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def require(package: str, purpose: str):
    """The imported package, or a UsageError naming it and the pip command (one line)."""
    if not available(package):
        raise UsageError(f"{purpose} needs the '{package}' package, which is not installed: "
                         f"pip install {PIP_NAMES.get(package, package)}")
    return importlib.import_module(package)


@contextmanager
def _env(**kw):
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def openvino(purpose: str = "OpenVINO export"):
    """The openvino module (telemetry-free use: see the module docstring)."""
    return require("openvino", purpose)


@functools.cache
def ov_core():
    """One OpenVINO Core for the process: compiled models must not outlive the Core they came from (a Core
    released while its compiled models are still referenced can crash the process when they are freed)."""
    return openvino("an OpenVINO model").Core()


def nncf(purpose: str = "OpenVINO INT8 (--int8)"):
    """The nncf module, its telemetry a stub and no openvino-telemetry client id created."""
    os.environ.setdefault("NNCF_CI", "1")
    if not available("nncf"):
        require("nncf", purpose)
    with _env(CI="true"):
        return require("nncf", purpose)


def tensorrt(purpose: str = "TensorRT export (--include engine)"):
    return require("tensorrt", purpose)


def default_threads() -> int:
    """The deployment's default intra-op threads: this machine's CPU cores available to the process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_runtime(runtime: str) -> None:
    """Refuse (UsageError, one line) an unknown runtime or one whose package is not installed."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime '{runtime}': choose from {', '.join(RUNTIMES)}")
    try:
        __import__(runtime)
    except ImportError:
        raise UsageError(f"--runtime {runtime}: the '{runtime}' package is not installed (pip install {runtime})") \
            from None


def runtime_call(runtime: str, onnx_file: str | Path | bytes, threads: int, x: np.ndarray) -> Callable[[], object]:
    """A callable running one inference of the ONNX model (a file, or its bytes) on `x` (the module docstring)."""
    if runtime == "onnxruntime":
        sess = _ort_session(onnx_file if isinstance(onnx_file, bytes) else str(onnx_file), threads)
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    if runtime == "openvino":
        core = ov_core()
        model = core.read_model(str(onnx_file)) if not isinstance(onnx_file, bytes) else \
            core.read_model(model=onnx_file, weights=b"")
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                     "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()
        return lambda: req.infer({0: x})
    raise UsageError(f"unknown --runtime '{runtime}': choose from {', '.join(RUNTIMES)}")


def _ort_session(model: bytes | str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def median_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 15) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def conv_graph(cin: int, cout: int, k: tuple, s: tuple, p: tuple, groups: int, hw: tuple, batch: int) -> bytes:
    """A one-layer ONNX model: Conv (random weights, bias) + SiLU on a (batch, cin, h, w) input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.random((cout, cin // groups, *k), dtype=np.float32), "w")
    b = numpy_helper.from_array(rng.random(cout, dtype=np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(k), strides=list(s),
                              pads=[p[0], p[1], p[0], p[1]], group=groups),
             helper.make_node("Sigmoid", ["c"], ["g"]), helper.make_node("Mul", ["c", "g"], ["y"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [batch, cin, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
