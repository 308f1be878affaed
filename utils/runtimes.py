# AGPL-3.0 License
"""Optional deployment runtimes (OpenVINO, NNCF, TensorRT), imported on demand with one clear line when absent,
and with their telemetry off.

Telemetry: `openvino.convert_model` (ovc) and NNCF report usage through openvino-telemetry unless the user opted
out. Nothing here calls ovc: ONNX files are read by the OpenVINO runtime (`Core.read_model`) and written with
`openvino.save_model`, neither of which reports. NNCF's own switch is the NNCF_CI environment variable (its
telemetry becomes a stub when set, nncf/telemetry/wrapper.py); it is set before NNCF is imported, and NNCF's
import runs with CI=true so that openvino-telemetry's consent check declines instead of creating a client id
(both tools pass disable_in_ci=True). tests/test_int8.py checks that an INT8 export opens no socket.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from contextlib import contextmanager

from utils.general import UsageError

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


def nncf(purpose: str = "OpenVINO INT8 (--int8)"):
    """The nncf module, its telemetry a stub and no openvino-telemetry client id created."""
    os.environ.setdefault("NNCF_CI", "1")
    if not available("nncf"):
        require("nncf", purpose)
    with _env(CI="true"):
        return require("nncf", purpose)


def tensorrt(purpose: str = "TensorRT export (--include engine)"):
    return require("tensorrt", purpose)
