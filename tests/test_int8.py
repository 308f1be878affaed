# AGPL-3.0 License
"""--int8: the decode stays FP32 (every family), INT8 files hold INT8 weights and run like the model they came
from, nothing opens a socket, bad input fails with one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import export
from engine.backends import load_exported
from engine.exporter import export_onnx, prepare
from models.export_graph import decode_tail, onnx_nodes
from models.loader import load_model
from utils import runtimes

needs_ov = pytest.mark.skipif(not (runtimes.available("openvino") and runtimes.available("nncf")),
                              reason="openvino and nncf not installed")


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov8n.yaml", "yolov7-tiny.yaml"])
def test_decode_tail_keeps_the_head_post_processing(cfg, tmp_path):
    f = tmp_path / "m.onnx"
    export_onnx(prepare(load_model(cfg, nc=4)), torch.zeros(1, 3, 64, 64), f)
    proto = onnx.load(str(f))
    tail = set(decode_tail(onnx_nodes(proto)))
    by_name = {n.name: n for n in proto.graph.node}
    out_producer = next(n.name for n in proto.graph.node if proto.graph.output[0].name in n.output)
    assert out_producer in tail  # the Concat of boxes and scores stays FP32
    assert all(by_name[n].op_type != "Conv" or "/dfl/" in n for n in tail)  # no feature conv excluded
    sigmoids = [n.name for n in proto.graph.node if n.op_type == "Sigmoid"]
    head_sig = [s for s in sigmoids if not any(c.op_type == "Mul" and s.replace("Sigmoid", "Mul") == c.name
                                               for c in proto.graph.node)]
    assert set(head_sig) <= tail or cfg != "yolov5n.yaml"
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(tail) < len(proto.graph.node) - len(convs)  # the backbone is not in it


@needs_ov
@pytest.mark.slow
def test_int8_export_onnx_and_openvino(tmp_path, shapes_yaml):
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=4)
    res = export.run(weights="yolov5n.yaml", model=model, include=["onnx", "openvino"], imgsz=[64], device="cpu",
                     int8=True, data=str(shapes_yaml), int8_images=8, project=str(tmp_path), name="q")
    assert res["openvino"]["int8_constants"] > 0 and res["onnx"]["fp32_nodes"] > 0
    q = onnx.load(res["onnx"]["file"])
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert res["onnx"]["file"].endswith("_int8.onnx") and res["openvino"]["file"].endswith("_int8_openvino_model")
    x = torch.rand(1, 3, 64, 64)
    for fmt in ("onnx", "openvino"):
        m = load_exported(res[fmt]["file"])
        assert m.precision == "int8" and torch.isfinite(m(x)).all()


@needs_ov
@pytest.mark.slow
def test_int8_export_opens_no_socket(tmp_path, shapes_yaml):
    """Outside pytest (NNCF stubs its telemetry under pytest by itself): any connect attempt fails the run."""
    code = textwrap.dedent(f"""
        import socket, sys
        tried, connect = [], socket.socket.connect
        def refuse(sock, addr):
            if sock.family == socket.AF_UNIX:  # dataloader workers share tensors over local sockets
                return connect(sock, addr)
            tried.append(addr)
            raise OSError("no network")
        def refuse_any(*a, **k):
            tried.append(a[:1])
            raise OSError("no network")
        socket.socket.connect = refuse
        socket.create_connection = refuse_any
        socket.getaddrinfo = refuse_any  # a lookup is an attempt too (it fails first where DNS is absent)
        import torch, export
        from models.loader import load_model
        export.run(weights="yolov5n.yaml", model=load_model("yolov5n.yaml", nc=4), include=["openvino"],
                   imgsz=[64], device="cpu", int8=True, data={str(shapes_yaml)!r}, int8_images=4,
                   project={str(tmp_path)!r}, name="q", check=False)
        print("connect attempts:", tried)
        sys.exit(3 if tried else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(Path(export.__file__).parent))
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-2000:]


@pytest.mark.parametrize("argv, msg", [
    (["--include", "onnx", "--int8"], "--int8 needs calibration images"),
    (["--include", "engine"], "needs a CUDA GPU"),
    (["--include", "tflite"], "unknown --include 'tflite'"),
    (["--include", "torchscript", "--int8", "--data", "x.yaml"], "--int8 applies to onnx and openvino"),
    (["--include", "onnx", "--int8", "--half", "--data", "x.yaml"], "exclude each other"),
])
def test_bad_input_one_line(argv, msg, tmp_path, capsys):
    rc = export.main(["--weights", "yolov5n.yaml", "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path),
                      *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("pkg, argv", [
    ("openvino", ["--include", "openvino"]),
    ("nncf", ["--include", "openvino", "--int8", "--data", "x.yaml"]),
])
def test_missing_package_one_line(pkg, argv, tmp_path, capsys, monkeypatch):
    real = runtimes.available
    monkeypatch.setattr(runtimes, "available", lambda p: False if p == pkg else real(p))
    rc = export.main(["--weights", "yolov5n.yaml", "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path),
                      *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"'{pkg}' package" in err and f"pip install {pkg}" in err and len(err.splitlines()) == 1
