# AGPL-3.0 License
"""Every model yaml builds and runs; fusing keeps outputs; official checkpoints load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ROOT, YOLOV5N_PT, YOLOV9T_PT, need

from models.common import RepConv
from models.loader import load_model, model_family
from models.yolo import Model

OUR_YAMLS = sorted(str(p.relative_to(ROOT / "models")) for p in (ROOT / "models").rglob("*.yaml"))
ULTRALYTICS_YAMLS = ["yolov5nu.yaml", "yolov8n.yaml", "yolov9t.yaml", "yolo11n.yaml"]


def test_all_families_have_yamls():
    assert {"yolov5n.yaml", "yolov5x.yaml", "v5.0/yolov5s.yaml", "yolov7.yaml", "yolov7-tiny.yaml"} <= set(OUR_YAMLS)


@pytest.mark.parametrize("cfg", OUR_YAMLS + ULTRALYTICS_YAMLS)
def test_yaml_builds_and_runs(cfg):
    model = load_model(cfg, nc=3)
    assert model.nc == 3 and len(model.names) == 3
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    pred = out[0] if isinstance(out, (list, tuple)) else out
    n_anchors = (8 * 12 + 4 * 6 + 2 * 3)  # cells over strides 8, 16, 32 at 64x96
    if model_family(model) == "ultralytics":
        assert pred.shape == (2, 4 + 3, n_anchors)
    else:
        assert pred.shape == (2, 3 * n_anchors, 5 + 3)
    assert torch.isfinite(pred).all()


def test_yolov5_param_counts_match_official():
    # published parameter counts of the unfused v6 and v5.0 YOLOv5s and of YOLOv7
    assert sum(p.numel() for p in Model("yolov5s.yaml").parameters()) == 7235389
    assert sum(p.numel() for p in Model("v5.0/yolov5s.yaml").parameters()) == 7276605
    assert sum(p.numel() for p in Model("yolov7.yaml").parameters()) == 37622682


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "v5.0/yolov5n.yaml", "yolov7-tiny.yaml"])
def test_fuse_keeps_outputs(cfg):
    torch.manual_seed(0)
    model = Model(cfg, nc=4)
    _randomize_bn(model)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        fused = model.fuse()(x)[0]
    assert torch.allclose(ref, fused, rtol=1e-3, atol=1e-3)


def test_repconv_fuse_matches_branches():
    torch.manual_seed(0)
    for c1, c2, s in ((8, 8, 1), (8, 16, 1), (8, 8, 2)):
        m = RepConv(c1, c2, 3, s)
        _randomize_bn(m)
        m.eval()
        x = torch.randn(2, c1, 12, 12)
        with torch.no_grad():
            ref = m(x)
            from models.yolo import fuse_repconv

            fuse_repconv(m)
            assert hasattr(m, "rbr_reparam") and not hasattr(m, "rbr_dense")
            assert torch.allclose(ref, m(x), atol=1e-4), (c1, c2, s)


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_unknown_module_in_yaml_is_a_clear_error(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text((ROOT / "models" / "yolov5n.yaml").read_text().replace("SPPF", "os.system"))
    with pytest.raises(ValueError, match="unknown module 'os.system'"):
        Model(y)


def test_yaml_activation_is_parsed_not_evaluated(tmp_path):
    y = tmp_path / "act.yaml"
    y.write_text((ROOT / "models" / "yolov5n.yaml").read_text() + "activation: nn.LeakyReLU(0.1)\n")
    m = Model(y)
    assert isinstance(m.model[0].act, torch.nn.LeakyReLU)
    assert isinstance(Model("yolov5n.yaml").model[0].act, torch.nn.SiLU)  # no leak into later builds


@pytest.mark.assets
@need(YOLOV5N_PT)
def test_official_yolov5n_loads():
    model = load_model(YOLOV5N_PT, fuse=True)
    assert model_family(model) == "yolov5"
    assert model.nc == 80 and model.names[0] == "person" and model.names[79] == "toothbrush"
    assert sum(p.numel() for p in model.parameters()) == 1867405  # REFERENCE.md, after fusing
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        pred = model(torch.zeros(1, 3, 320, 320))[0]
    assert pred.shape == (1, 6300, 85)


@pytest.mark.assets
@need(YOLOV5N_PT)
def test_loading_never_modifies_the_weights_file():
    before = YOLOV5N_PT.stat().st_mtime_ns, YOLOV5N_PT.read_bytes()[:4096]
    load_model(YOLOV5N_PT, fuse=True)
    assert (YOLOV5N_PT.stat().st_mtime_ns, YOLOV5N_PT.read_bytes()[:4096]) == before


@pytest.mark.assets
@need(YOLOV9T_PT)
def test_ultralytics_yolov9t_checkpoint_loads():
    model = load_model(YOLOV9T_PT)
    assert model_family(model) == "ultralytics"
    assert model.nc == 1 and model.names == {0: "ball"}
    with torch.no_grad():
        pred = model(torch.zeros(1, 3, 160, 160))[0]
    assert pred.shape == (1, 5, 525)


def test_checkpoint_roundtrip(tmp_path):
    from utils.checkpoint import save_checkpoint

    model = Model("yolov7-tiny.yaml", nc=2).eval()
    f = save_checkpoint({"model": model, "epoch": 3}, tmp_path / "w" / "m.pt")
    assert not list(Path(f).parent.glob("*.tmp"))
    loaded = load_model(f)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], loaded(x)[0], atol=1e-6)
