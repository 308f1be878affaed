# AGPL-3.0 License
"""engine.backends: exported files (ONNX, OpenVINO, TorchScript) run like the PyTorch model they came from, carry
their own metadata, and val.py / detect.py take them; bad input fails with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import detect
import export
import val
from engine.backends import ExportedModel, is_exported, load_exported
from engine.validation.common import to_nms_format
from models.loader import fuse_model, is_anchor_based, load_model, model_family
from utils.general import UsageError
from utils.runtimes import available

FORMATS = ["onnx", "torchscript"] + (["openvino"] if available("openvino") else [])


def _export(tmp_path, cfg="yolov5n.yaml", **kw):
    torch.manual_seed(0)
    model = load_model(cfg, nc=4)
    res = export.run(weights=cfg, model=model, imgsz=[64], device="cpu", project=str(tmp_path), name="e", **kw)
    return fuse_model(model).eval(), res


@pytest.mark.parametrize("cfg", [pytest.param("yolov5n.yaml", marks=pytest.mark.slow), "yolov8n.yaml",
                                 pytest.param("yolov7-tiny.yaml", marks=pytest.mark.slow)])
def test_exported_runs_like_pytorch(cfg, tmp_path):
    model, res = _export(tmp_path, cfg, include=FORMATS)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    for fmt, r in res.items():
        m = load_exported(r["file"])
        assert isinstance(m, ExportedModel) and is_exported(r["file"])
        assert model_family(m) == model_family(model) and is_anchor_based(m) == is_anchor_based(model)
        assert m.names == model.names and m.imgsz == (64, 64) and int(m.stride.max()) == int(model.stride.max())
        y = m(x)
        assert y.shape == ref.shape, fmt
        assert (y - ref).abs().max() <= 1e-3 * max(1.0, float(ref.abs().max())), fmt
        assert torch.equal(to_nms_format(y, m), to_nms_format(y, model))


def test_fixed_batch_is_chunked_and_padded(tmp_path):
    _, res = _export(tmp_path, include=["onnx"], batch_size=2)
    m = load_exported(res["onnx"]["file"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = m(x)
    assert y.shape[0] == 3
    assert torch.allclose(y[2:], m(x[2:].repeat(2, 1, 1, 1))[:1], atol=1e-4)


def test_fixed_shape_rejects_other_sizes(tmp_path):
    _, res = _export(tmp_path, include=["onnx"])
    m = load_exported(res["onnx"]["file"])
    with pytest.raises(UsageError, match="exported for 64x64"):
        m(torch.zeros(1, 3, 96, 64))


def test_file_without_metadata_is_refused(tmp_path):
    model = load_model("yolov5n.yaml", nc=4)
    f = tmp_path / "bare.onnx"
    from engine.exporter import export_onnx, prepare

    export_onnx(prepare(model), torch.zeros(1, 3, 64, 64), f)  # no metadata
    with pytest.raises(UsageError, match="export it again"):
        load_exported(f)


def test_val_and_detect_take_exported_files(tmp_path, shapes_yaml):
    _, res = _export(tmp_path, include=["onnx"], dynamic=True)
    pt = tmp_path / "m.pt"
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint({"model": load_model("yolov5n.yaml", nc=4)}, pt)
    kw = dict(data=str(shapes_yaml), imgsz=64, batch_size=4, project=str(tmp_path / "val"), plots=False,
              no_progress=True, workers=0)
    r_pt, _ = val.run(weights=str(pt), **kw)
    r_onnx, d = val.run(weights=res["onnx"]["file"], **kw)
    assert (d / "metrics.json").is_file()
    assert abs(r_pt.map50_95 - r_onnx.map50_95) <= 1e-3 and r_pt.images == r_onnx.images
    img = next((shapes_yaml.parent).rglob("*.jpg"), None) or next((shapes_yaml.parent).rglob("*.png"))
    _, out = detect.run(weights=res["onnx"]["file"], source=str(img), imgsz=64, conf_thres=0.001, nosave=True,
                        project=str(tmp_path / "det"))
    _, ref = detect.run(weights=str(pt), source=str(img), imgsz=64, conf_thres=0.001, nosave=True,
                        project=str(tmp_path / "det"))
    assert len(out) == len(ref) == 1 and out[0]["det"].shape == ref[0]["det"].shape
    if len(ref[0]["det"]):
        assert np.abs(out[0]["det"][:, :5] - ref[0]["det"][:, :5]).max() <= 1.0  # pixels, rounded boxes


def test_fixed_shape_val_letterboxes_to_the_export(tmp_path, shapes_yaml):
    _, res = _export(tmp_path, include=["onnx"])
    r, _ = val.run(weights=res["onnx"]["file"], data=str(shapes_yaml), imgsz=128, batch_size=3,
                   project=str(tmp_path / "val"), plots=False, no_progress=True, workers=0)
    assert r.images > 0


@pytest.mark.parametrize("argv, msg", [
    (["--weights", "x.onnx", "--task", "speed"], "needs the PyTorch checkpoint"),
    (["--weights", "missing_openvino_model"], "missing_openvino_model"),
])
def test_val_bad_exported_input_one_line(argv, msg, tmp_path, capsys):
    rc = val.main([*argv, "--project", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_compress_and_train_refuse_exported_files(fmt, tmp_path, capsys):
    import compress
    import train

    _, res = _export(tmp_path, "yolov8n.yaml", include=[fmt])
    f = str(res[fmt]["file"])
    for cli, main in (("compress.py", compress.main), ("train.py", train.main)):
        rc = main(["--weights", f, "--project", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith(f"ERROR: {cli} needs the PyTorch checkpoint (.pt)"), err
    assert not (tmp_path / "runs").exists()
