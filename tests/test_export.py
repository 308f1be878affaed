# AGPL-3.0 License
"""export.py: pruned models of every family export to ONNX/TorchScript and match PyTorch; bad input fails cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import export
from models.loader import load_model


def _pruned(cfg: str, tmp_path, ratio: float = 0.3):
    from models.loader import load_model
    from prune import build_groups
    from prune.importance import get_criterion
    from prune.surgery import apply_removal
    from prune.plans import plan_uniform
    from utils.checkpoint import save_checkpoint

    model = load_model(cfg, nc=4)
    groups = build_groups(model, imgsz=64)
    crit = get_criterion("l1")
    apply_removal(model, groups, plan_uniform(groups, scores={g.id: crit(model, g) for g in groups.prunable},
                                              ratio=ratio))
    return save_checkpoint({"model": model}, tmp_path / f"{cfg.replace('.yaml', '')}_pruned.pt"), model


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov8n.yaml", "yolov7-tiny.yaml"])
def test_pruned_onnx_matches_pytorch(cfg, tmp_path):
    import onnxruntime as ort

    from models.loader import fuse_model

    path, model = _pruned(cfg, tmp_path)
    before = path.read_bytes()
    res = export.run(weights=str(path), include=["onnx", "torchscript"], imgsz=[64], device="cpu")
    assert path.read_bytes() == before  # input weights untouched
    onnx_file = res["onnx"]["file"] if isinstance(res["onnx"], dict) else res["onnx"]
    # an independent check on an input the export never saw
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    m = fuse_model(model.float().eval())
    with torch.no_grad():
        ref = m(x)
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
    ts = torch.jit.load(str(res["torchscript"]["file"] if isinstance(res["torchscript"], dict) else res["torchscript"]))
    with torch.no_grad():
        y = ts(x)
    assert np.abs((y[0] if isinstance(y, (list, tuple)) else y).numpy() - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def test_dynamic_onnx_other_batch_and_size(tmp_path):
    import onnxruntime as ort

    path, _ = _pruned("yolov5n.yaml", tmp_path)
    res = export.run(weights=str(path), include=["onnx"], imgsz=[64], device="cpu", dynamic=True)
    f = res["onnx"]["file"] if isinstance(res["onnx"], dict) else res["onnx"]
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.random.rand(2, 3, 96, 128).astype(np.float32)})[0]
    assert out.shape[0] == 2 and out.shape[1] == 3 * (96 // 8 * 128 // 8 + 96 // 16 * 128 // 16 + 96 // 32 * 128 // 32)


@pytest.mark.parametrize("argv, msg", [
    (["--weights", "missing.pt"], "missing.pt"),
    (["--weights", "yolov5n.yaml", "--opset", "3"], "--opset 3 not supported"),
    (["--weights", "yolov5n.yaml", "--half", "--device", "cpu"], "--half"),
])
def test_bad_input_one_line(argv, msg, tmp_path, capsys):
    rc = export.main([*argv, "--imgsz", "64", "--project", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and msg in err and len(err.splitlines()) == 1


def test_read_only_weights_folder_exports_to_the_run_folder(tmp_path):
    """Weights in a folder whose permission bits deny writes (even when run as root): files go to --project."""
    src = tmp_path / "ro"
    src.mkdir()
    w = src / "m.pt"
    torch.save({"model": load_model("yolov8n.yaml", nc=2).half()}, w)
    src.chmod(0o555)
    try:
        rc = export.main(["--weights", str(w), "--include", "onnx", "--imgsz", "64", "--project", str(tmp_path / "runs")])
    finally:
        src.chmod(0o755)
    assert rc == 0 and sorted(p.name for p in src.iterdir()) == ["m.pt"]
    assert (tmp_path / "runs" / "exp" / "m.onnx").is_file()
