"""Tests for the built-in synthetic shapes dataset and the shipped dataset / hyperparameter yamls."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.shapes import (  # noqa: E402
    MARKER,
    SHAPES_NAMES,
    ensure_shapes,
    is_shapes_data,
    render_sample,
    resolve_shapes,
    shapes_dir,
    shapes_root,
)

N_TRAIN, N_VAL = 12, 4  # small for speed; index 7 is a background-only image


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every image/label file, keyed by path relative to the dataset root."""
    files = sorted(p for sub in ("images", "labels") for p in (root / sub).rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("cache"), N_TRAIN, N_VAL, seed=0)


def test_yaml_keys_and_layout(generated: Path) -> None:
    d = yaml.safe_load(generated.read_text())
    root = Path(d["path"])
    assert root.is_absolute() and root == generated.parent
    assert d["train"] == "images/train" and d["val"] == "images/val"
    assert d["nc"] == len(SHAPES_NAMES) and d["names"] == dict(enumerate(SHAPES_NAMES))
    assert 3 <= len(SHAPES_NAMES) <= 5
    assert (root / MARKER).is_file()
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        imgs = sorted((root / "images" / split).glob("*.png"))
        labs = sorted((root / "labels" / split).glob("*.txt"))
        assert len(imgs) == len(labs) == n
        assert [p.stem for p in imgs] == [p.stem for p in labs]


def test_labels_valid(generated: Path) -> None:
    import cv2

    root = generated.parent
    n_empty, sizes = 0, set()
    for lab in sorted((root / "labels").rglob("*.txt")):
        img = cv2.imread(str(root / "images" / lab.parent.name / f"{lab.stem}.png"))
        assert img is not None
        sizes.add(img.shape[:2])
        rows = [line.split() for line in lab.read_text().splitlines() if line.strip()]
        n_empty += not rows
        assert len(rows) <= 6
        for r in rows:
            assert len(r) == 5
            c, xc, yc, w, h = int(r[0]), *map(float, r[1:])
            assert 0 <= c < len(SHAPES_NAMES)
            assert all(0.0 <= v <= 1.0 for v in (xc, yc, w, h)) and w > 0 and h > 0
            assert xc - w / 2 >= -1e-6 and xc + w / 2 <= 1 + 1e-6
            assert yc - h / 2 >= -1e-6 and yc + h / 2 <= 1 + 1e-6
    assert n_empty >= 1  # background-only images exist
    assert len(sizes) > 1  # varied shapes -> rectangular batching is exercised


def test_boxes_are_tight() -> None:
    """Boxes equal the extent of the pixels cv2 draws on the image, also for shapes cut by the border."""
    from data.shapes import _draw, _geometry, _tight_box

    rng = np.random.default_rng(0)
    for _ in range(150):
        w, h = int(rng.integers(160, 321)), int(rng.integers(160, 321))
        cls, size = int(rng.integers(len(SHAPES_NAMES))), rng.uniform(16, 160)
        geom = _geometry(cls, rng.uniform(-40, w + 40), rng.uniform(-40, h + 40), size, rng.uniform(-3, 3))
        scratch = np.zeros((h, w), np.uint8)
        box = _tight_box(cls, geom, scratch)
        assert not scratch.any()
        canvas = np.zeros((h, w, 3), np.uint8)
        _draw(canvas, cls, geom, (255, 255, 255))
        cols, rows = np.flatnonzero(canvas.any((0, 2))), np.flatnonzero(canvas.any((1, 2)))
        if box is None:
            assert cols.size == 0 or cols[-1] + 1 - cols[0] < 3 or rows[-1] + 1 - rows[0] < 3
        else:
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_deterministic(tmp_path: Path) -> None:
    a = ensure_shapes(tmp_path / "a", N_TRAIN, N_VAL, seed=3)
    b = ensure_shapes(tmp_path / "b", N_TRAIN, N_VAL, seed=3)
    c = ensure_shapes(tmp_path / "c", N_TRAIN, N_VAL, seed=4)
    ha, hb, hc = _hashes(a.parent), _hashes(b.parent), _hashes(c.parent)
    assert ha == hb and len(ha) == 2 * (N_TRAIN + N_VAL)
    assert ha.keys() == hc.keys() and ha != hc
    img1, lab1 = render_sample(3, "val", 2)
    img2, lab2 = render_sample(3, "val", 2)
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)


def test_cache_reused(tmp_path: Path) -> None:
    first = ensure_shapes(tmp_path, N_TRAIN, N_VAL)
    root = first.parent
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    second = ensure_shapes(tmp_path, N_TRAIN, N_VAL)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folders left behind


def test_crashed_leftovers(tmp_path: Path) -> None:
    final = shapes_dir(tmp_path, N_TRAIN, N_VAL, 0)
    # A temp folder from a crashed run (no marker) ...
    stale = tmp_path / f".{final.name}.tmp-crashed"
    (stale / "images" / "train").mkdir(parents=True)
    (stale / "images" / "train" / "000000.png").write_bytes(b"garbage")
    old = 1_000_000_000  # mtime in 2001: clearly stale
    os.utime(stale, (old, old))
    # ... and an incomplete final folder (e.g. copied by hand) must not be trusted.
    (final / "images" / "train").mkdir(parents=True)
    (final / "shapes.yaml").write_text("path: nowhere\n")
    y = ensure_shapes(tmp_path, N_TRAIN, N_VAL, 0)
    assert y == final / "shapes.yaml" and (final / MARKER).is_file()
    assert yaml.safe_load(y.read_text())["path"] == str(final)
    assert len(list((final / "images" / "train").glob("*.png"))) == N_TRAIN
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOC_CACHE", str(tmp_path / "env"))
    assert shapes_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("YOLOC_CACHE")
    assert shapes_root() == (Path.home() / ".cache" / "yolo-compress").resolve()
    assert shapes_root(tmp_path) == tmp_path.resolve()


def test_builtin_yaml_and_resolve(tmp_path: Path) -> None:
    spec_path = ROOT / "data" / "shapes.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    assert spec["builtin"] == "shapes"
    assert spec["names"] == dict(enumerate(SHAPES_NAMES)) and spec["nc"] == len(SHAPES_NAMES)
    assert is_shapes_data("shapes") and is_shapes_data(spec_path) and is_shapes_data(str(spec_path))
    assert not is_shapes_data(ROOT / "data" / "coco128.yaml") and not is_shapes_data("coco128.yaml")
    assert resolve_shapes("coco128.yaml", tmp_path) is None
    y = resolve_shapes({"builtin": "shapes", "n_train": 3, "n_val": 2, "seed": 1}, tmp_path)
    assert y == shapes_dir(tmp_path, 3, 2, 1) / "shapes.yaml" and y.is_file()


def test_hyps() -> None:
    hyps = sorted((ROOT / "data" / "hyps").glob("*.yaml"))
    names = {p.name for p in hyps}
    assert {
        "hyp.scratch-low.yaml",
        "hyp.scratch-med.yaml",
        "hyp.scratch-high.yaml",
        "hyp.finetune.yaml",
        "hyp.scratch.yaml",
    } <= names
    for p in hyps:
        assert p.read_text().startswith("#"), p.name
        h = yaml.safe_load(p.read_text())
        for k in ("lr0", "box", "cls", "obj", "anchor_t"):
            assert isinstance(h[k], float), (p.name, k)
    low = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    assert (low["lr0"], low["lrf"], low["anchor_t"], low["mosaic"]) == (0.01, 0.01, 4.0, 1.0)
    ft = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.finetune.yaml").read_text())
    assert (ft["lr0"], ft["lrf"], ft["anchor_t"], ft["mixup"]) == (0.0032, 0.12, 2.91, 0.243)


def _only_strings(v: object) -> bool:
    if isinstance(v, str):
        return True
    if isinstance(v, list):
        return bool(v) and all(_only_strings(x) for x in v)
    if isinstance(v, dict):
        return bool(v) and all(isinstance(k, str) and _only_strings(x) for k, x in v.items())
    return False


@pytest.mark.parametrize("name,nc", [("coco.yaml", 80), ("coco128.yaml", 80), ("VOC.yaml", 20)])
def test_dataset_yamls(name: str, nc: int) -> None:
    d = yaml.safe_load((ROOT / "data" / name).read_text())
    assert isinstance(d["path"], str) and d["train"] and d["val"]
    assert d["nc"] == nc and len(d["names"]) == nc
    assert sorted(d["names"]) == list(range(nc)) and all(isinstance(v, str) for v in d["names"].values())
    dl = d["download"]
    assert isinstance(dl, (list, dict)) and _only_strings(dl)
    urls = dl["urls"] if isinstance(dl, dict) else dl
    assert urls and all(u.startswith(("http://", "https://")) and "\n" not in u for u in urls)
    text = yaml.safe_dump(dl)
    for code in ("import ", "python", "bash", "$(", "exec", "os.system", "def "):
        assert code not in text
