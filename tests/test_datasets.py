# AGPL-3.0 License
"""data.datasets: label caches of read-only datasets (kept under $YOLOC_CACHE, scanned once per run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ultralytics.data.dataset as ul_dataset
import ultralytics.data.utils as ul_data

from data import datasets
from data.datasets import build_train_dataset, build_val_loader, check_dataset, label_cache_path, labels_writable
from data.shapes import ensure_shapes


@pytest.fixture
def dataset_copy(tmp_path, monkeypatch):
    """A tiny shapes dataset copied to tmp (yaml, root), $YOLOC_CACHE in tmp, label scans counted."""
    src = Path(ensure_shapes(cache_dir=tmp_path / "gen", n_train=8, n_val=4, seed=0)).parent
    root = tmp_path / "ds"
    shutil.copytree(src, root)
    y = root / "data.yaml"
    y.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [circle, square, triangle, cross]\n")
    monkeypatch.setenv("YOLOC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_NOTED_READ_ONLY", set())
    scans = []
    orig = ul_dataset.YOLODataset.cache_labels

    def counting(self, path=Path("./labels.cache")):
        scans.append(Path(path))
        return orig(self, path)

    monkeypatch.setattr(ul_dataset.YOLODataset, "cache_labels", counting)
    return y, root, scans


def _read_only(root: Path, monkeypatch):
    """The labels folders read-only: chmod -w, and ultralytics' own check says so too (root may write anyway)."""
    real = ul_data.is_dir_writeable
    monkeypatch.setattr(ul_data, "is_dir_writeable",
                        lambda p: False if str(Path(p).resolve()).startswith(str(root.resolve())) else real(p))
    for d in (root / "labels").rglob("*"):
        d.chmod(0o555)
    (root / "labels").chmod(0o555)


def _writable_again(root: Path):
    for d in [root / "labels", *(root / "labels").rglob("*")]:
        d.chmod(0o755)


def test_read_only_dataset_scanned_once_cache_under_yoloc_cache(dataset_copy, monkeypatch, capfd):
    y, root, scans = dataset_copy
    _read_only(root, monkeypatch)
    try:
        data = check_dataset(y, splits=("train", "val"))
        for _ in range(2):  # e.g. validation, then calibration, in one run
            build_val_loader(data, "val", 64, 4, 32, workers=0)
        out = capfd.readouterr()
        text = out.out + out.err
        assert len(scans) == 1, scans
        mirror = label_cache_path(root / "labels" / "val.cache")
        assert scans[0] == mirror and mirror.is_file()
        assert mirror.is_relative_to(Path(str(root.parent / "cache")).resolve())
        assert not list((root / "labels").glob("*.cache"))  # nothing written into the dataset
        assert text.count("is read-only") == 1, text
        assert "cache not saved" not in text

        # the training dataset of the same run: its own split, one scan, no second note for the val folder
        from ultralytics.cfg import get_cfg

        cfg = get_cfg(overrides={"imgsz": 64, "task": "detect", "cache": False, "rect": False})
        ds = build_train_dataset(cfg, data["train"], 4, {**data, "channels": 3}, stride=32)
        ds2 = build_train_dataset(cfg, data["train"], 4, {**data, "channels": 3}, stride=32)
        assert len(ds) == len(ds2) == 8 and ds.augment
        assert len(scans) == 2 and scans[1] == label_cache_path(root / "labels" / "train.cache")
        text = "".join(capfd.readouterr())
        assert "is read-only" not in text and "cache not saved" not in text  # the note came once, above
    finally:
        _writable_again(root)


def test_stale_mirror_is_rescanned(dataset_copy, monkeypatch):
    y, root, scans = dataset_copy
    _read_only(root, monkeypatch)
    try:
        data = check_dataset(y, splits=("val",))
        mirror = label_cache_path(root / "labels" / "val.cache")
        mirror.parent.mkdir(parents=True)
        mirror.write_bytes(b"truncated")
        assert len(build_val_loader(data, "val", 64, 4, 32, workers=0).dataset) == 4
        assert len(scans) == 1 and mirror.stat().st_size > 100
    finally:
        _writable_again(root)


def test_writable_dataset_keeps_ultralytics_cache(dataset_copy):
    y, root, scans = dataset_copy
    data = check_dataset(y, splits=("val",))
    build_val_loader(data, "val", 64, 4, 32, workers=0)
    build_val_loader(data, "val", 64, 4, 32, workers=0)
    assert scans == [root / "labels" / "val.cache"] and scans[0].is_file()
    assert not (root.parent / "cache" / "labels").exists()


def test_labels_writable_permission_bits(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    assert labels_writable(d)
    d.chmod(0o555)
    try:
        assert not labels_writable(d)  # also as root, whom os.access lets write
    finally:
        d.chmod(0o755)
    assert not labels_writable(tmp_path / "missing")
