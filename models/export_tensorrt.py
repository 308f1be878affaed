# AGPL-3.0 License
"""TensorRT engine export (`--include engine`, CUDA only): built from this export's ONNX file with TensorRT's ONNX
parser, FP32 or FP16 (--half). The file starts with the metadata as ultralytics writes it (4-byte little-endian
length, then JSON), followed by the serialized engine, so engine.backends reads names and shapes without a .pt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.export import ExportError, written_atomically
from utils import runtimes
from utils.general import UsageError


def check_engine(device: torch.device, int8: bool) -> None:
    """One line, before anything is exported, when TensorRT cannot be used here."""
    if device.type != "cuda":
        raise UsageError("--include engine (TensorRT) needs a CUDA GPU: pass --device 0 on a machine with one, "
                         "or choose onnx / openvino for CPU deployment")
    if int8:
        raise UsageError("--include engine with --int8 is not supported yet: export the engine in FP16 (--half), "
                         "or INT8 with --include onnx openvino")
    runtimes.tensorrt()


def export_engine(onnx_file: Path, file: Path, metadata: dict, half: bool, dynamic: bool, shape: tuple,
                  workspace_gb: float = 4.0) -> Path:
    """Serialized TensorRT engine of the ONNX file (written atomically); dynamic: batch 1..2x, sizes as exported."""
    trt = runtimes.tensorrt()
    file = Path(file)
    with written_atomically(file, "TensorRT") as tmp:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_file)):
            raise ExportError(f"TensorRT could not parse {onnx_file}: {parser.get_error(0)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if half:
            config.set_flag(trt.BuilderFlag.FP16)
        if dynamic:
            profile = builder.create_optimization_profile()
            b, c, h, w = shape
            profile.set_shape(network.get_input(0).name, (1, c, h, w), shape, (max(1, 2 * b), c, h, w))
            config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise ExportError("TensorRT could not build the engine (see its log above)")
        meta = json.dumps(metadata).encode()
        with open(tmp, "wb") as f:
            f.write(len(meta).to_bytes(4, "little", signed=True))
            f.write(meta)
            f.write(bytes(engine))
    return file


def read_engine(file: Path) -> tuple[dict, bytes]:
    """(metadata, serialized engine) of an engine file this exporter wrote."""
    data = Path(file).read_bytes()
    n = int.from_bytes(data[:4], "little", signed=True)
    try:
        return json.loads(data[4:4 + n].decode()), data[4 + n:]
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError):
        raise UsageError(f"{file}: no metadata at the start of this engine: export it with export.py") from None
