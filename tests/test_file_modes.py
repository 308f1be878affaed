# AGPL-3.0 License
"""Output files follow the umask (0666 & ~umask, folders 0777 & ~umask) and a replaced file keeps its mode,
through every writer: utils.files, checkpoints, exports, val.py's run folder and plots, detect.py's outputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _check_tree(root: Path, umask: int) -> int:
    """Every file and folder under root (pytest makes root itself 0700)."""
    n = 0
    for p in root.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert _mode(p) == want, f"{p}: {oct(_mode(p))}, want {oct(want)}"
        n += 1
    return n


def test_utils_files_writers(umask, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.checkpoint import save_checkpoint
    from utils.files import atomic_output, copy_file, current_umask, save_figure, write_bytes, write_json, write_text

    assert current_umask() == umask
    files = [write_text(tmp_path / "a.txt", "x"), write_json({"a": 1}, tmp_path / "a.json"),
             write_bytes(tmp_path / "b.bin", b"\0"), save_checkpoint({"model": torch.nn.Conv2d(1, 2, 1)}, tmp_path / "w.pt")]
    files.append(copy_file(files[-1], tmp_path / "copy.pt"))
    with atomic_output(tmp_path / "c.csv") as tmp:
        tmp.write_text("1,2\n")
    fig = plt.figure()
    files += [tmp_path / "c.csv", save_figure(fig, tmp_path / "f.png")]
    plt.close(fig)
    assert _check_tree(tmp_path, umask) == len(files)


def test_replacing_a_file_keeps_its_mode(umask, tmp_path):
    from utils.checkpoint import save_checkpoint
    from utils.files import write_text

    for f, write in ((tmp_path / "r.md", lambda p: write_text(p, "new")),
                     (tmp_path / "last.pt", lambda p: save_checkpoint({"x": 1}, p))):
        f.write_text("old")
        f.chmod(0o640)
        write(f)
        assert _mode(f) == 0o640 and f.read_bytes() != b"old"


def test_exports_follow_the_umask(umask, tmp_path):
    import export
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    w = save_checkpoint({"model": load_model("yolov5n.yaml", nc=2)}, tmp_path / "w" / "m.pt")
    res = export.run(weights=str(w), include=["onnx", "torchscript"], imgsz=[64], device="cpu")
    assert {Path(r["file"] if isinstance(r, dict) else r).parent for r in res.values()} == {w.parent}
    assert _check_tree(tmp_path, umask) == 4  # w/, m.pt, m.onnx, m.torchscript


def test_val_and_detect_run_folders(umask, shapes_yaml, tmp_path):
    import detect
    import val

    assert val.main(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                     "--workers", "0", "--project", str(tmp_path / "val"), "--no-progress", "--save-txt"]) == 0
    assert _check_tree(tmp_path / "val", umask) >= 9  # exp/, metrics.json, 6 plots, labels/
    src = next((shapes_yaml.parent / "images" / "val").glob("*.png"))
    assert detect.main(["--weights", "yolov5n.yaml", "--source", str(src), "--img", "64", "--conf-thres", "0",
                        "--max-det", "2", "--save-txt", "--save-crop", "--project", str(tmp_path / "det")]) == 0
    assert _check_tree(tmp_path / "det", umask) >= 6  # exp/, image, labels/, label, crops/<class>/, crop


def test_builtin_dataset_folder_follows_the_umask(umask, tmp_path):
    from data.shapes import ensure_shapes

    y = ensure_shapes(cache_dir=tmp_path, n_train=1, n_val=1, seed=0)
    assert _mode(y.parent) == 0o777 & ~umask
