# AGPL-3.0 License
"""Shared fixtures: paths to the real assets (tests skip without them), tiny datasets, tmp run folders."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the real assets: $YOLOC_ASSETS if set (any checkout location), else ../shared/assets beside the repository
ASSETS = Path(os.environ.get("YOLOC_ASSETS") or ROOT.parent / "shared" / "assets").expanduser()
YOLOV5N_PT = ASSETS / "weights" / "yolov5n.pt"
YOLOV9T_PT = ASSETS / "weights" / "extra_noncoco" / "yolov9t_volleyball_ball_1cls.pt"
COCO128 = ASSETS / "datasets" / "coco128"

# 6 convs, 9 PAGCP units: a whole PAGCP pass at --ratio-step 0.45 takes ~20 oracle calls
TINY_YAML = """\
nc: 4
depth_multiple: 0.33
width_multiple: 0.25
anchors:
  - [10,13, 16,30, 33,23]
  - [30,61, 62,45, 59,119]
  - [116,90, 156,198, 373,326]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, C3, [128]],
   [-1, 1, Conv, [256, 3, 2]],
   [-1, 1, Conv, [512, 3, 2]],
   [-1, 1, Conv, [1024, 3, 2]]]
head:
  [[[3, 4, 5], 1, Detect, [nc, anchors]]]
"""

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the CLI subprocesses too
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def need(path: Path):
    """Skip marker for a test that needs a real asset."""
    return pytest.mark.skipif(not path.exists(), reason=f"real asset {path} not present (set YOLOC_ASSETS to the "
                                                        "assets folder)")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the built-in dataset cache out of the user's home unless CI pins one."""
    if "YOLOC_CACHE" not in os.environ:
        os.environ["YOLOC_CACHE"] = str(tmp_path_factory.mktemp("yoloc_cache"))
    yield


@pytest.fixture(scope="session")
def coco128_yaml(tmp_path_factory) -> Path:
    """COCO128 with images linked and labels copied to a tmp folder: loaders write *.cache next to the
    labels, and the shared assets must stay untouched."""
    if not COCO128.exists():
        pytest.skip("real asset coco128 not present")
    root = tmp_path_factory.mktemp("coco128")
    (root / "images").symlink_to(COCO128 / "images")
    shutil.copytree(COCO128 / "labels", root / "labels")
    for p in (root / "labels").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    names = (ASSETS / "datasets" / "coco128.yaml").read_text().split("names:", 1)[1]
    y = root / "coco128.yaml"
    y.write_text(f"path: {root}\ntrain: images/train2017\nval: images/train2017\nnames:{names}")
    return y


@pytest.fixture(scope="session")
def shapes_yaml(tmp_path_factory) -> Path:
    """A small built-in shapes dataset (fast to generate) described by a data yaml."""
    from data.shapes import ensure_shapes

    return Path(ensure_shapes(cache_dir=tmp_path_factory.mktemp("shapes"), n_train=16, n_val=8, seed=0))


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """The network unreachable (sockets and ultralytics' downloader): returns the list of attempts, recorded as
    well as refused, since ultralytics swallows the errors of some lookups (fonts) and falls back."""
    import socket

    import ultralytics.utils.downloads as downloads

    attempts = []

    def unreachable(*a, **k):
        attempts.append(a[:1])
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(downloads, "safe_download", unreachable)
    monkeypatch.setattr(downloads, "is_url", unreachable)
    return attempts
