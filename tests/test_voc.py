# AGPL-3.0 License
"""Pascal VOC XML datasets: conversion rules, one warning line, cache reuse/invalidation, read-only data, the CLIs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ASSETS, YOLOV5N_PT, need

RACCOON = ASSETS / "datasets" / "raccoon_voc"
W, H = 96, 64


def _xml(objects, size=(W, H), name="img.jpg") -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects)
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{name}</filename>{sz}{objs}</annotation>"


def _image(path: Path, box=(20, 10, 60, 50)):
    im = np.full((H, W, 3), 90, np.uint8)
    cv2.rectangle(im, box[:2], box[2:], (20, 200, 240), -1)
    cv2.imwrite(str(path), im)


def _voc(root: Path, ann: dict, split_ids: dict | None = None, names=("cat", "dog"), voc_block=None) -> Path:
    """A VOC folder: images/, annotations/ (<id>.xml text per id, None = no XML), <split>.txt lists, data.yaml."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, text in ann.items():
        _image(root / "images" / f"{i}.jpg")
        if text is not None:
            (root / "annotations" / f"{i}.xml").write_text(text)
    split_ids = split_ids or {"train": list(ann), "val": list(ann)}
    for s, ids in split_ids.items():
        (root / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
    block = voc_block or "voc:\n  images: images\n  annotations: annotations\n"
    names_txt = f"names: {list(names)}\n" if names else ""
    y = root / "data.yaml"
    y.write_text(f"path: .\n{block}train: train.txt\nval: val.txt\n{names_txt}")
    return y


def _labels(data: dict, split: str) -> dict[str, list[list[float]]]:
    """{image stem: label rows} of a converted split, read back from the mirror."""
    from data.datasets import img_files

    out = {}
    for f in img_files(data[split]):
        lab = Path(f.replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}")).with_suffix(".txt")
        out[Path(f).stem.split("__")[-1]] = [list(map(float, r.split())) for r in lab.read_text().splitlines()]
    return out


def test_conversion_rules_and_one_warning_line(tmp_path, capsys):
    from data.datasets import check_dataset

    ann = {
        "a": _xml([("cat", 0, (21, 11, 61, 51)), ("dog", 1, (1, 1, 10, 10))]),  # a difficult dog
        "b": _xml([("dog", 0, (-5, 30, 120, 70))]),  # outside the image: clipped
        "c": "<annotation><object><name>cat</name",  # does not parse: image skipped
        "d": _xml([("horse", 0, (5, 5, 20, 20)), ("cat", 0, (5, 5, 20, 20))]),  # unknown name
        "e": _xml([("cat", 0, (30, 30, 30, 40)), ("cat", 0, (200, 10, 220, 20))]),  # zero area (2nd after clipping)
        "f": None,  # no XML: background image
        "g": _xml([("dog", 0, (1, 1, 10, 10))], size=None),  # size from the image header
    }
    data = check_dataset(_voc(tmp_path / "ds", ann), splits=("train", "val"))
    out = capsys.readouterr().out
    assert data["names"] == {0: "cat", 1: "dog"} and "2 class names from the yaml" in out
    lab = _labels(data, "train")
    assert sorted(lab) == ["a", "b", "d", "e", "f", "g"]  # c dropped
    np.testing.assert_allclose(lab["a"], [[0, 40 / W, 30 / H, 40 / W, 40 / H]], atol=1e-6)  # 1-based -> 0-based
    np.testing.assert_allclose(lab["b"], [[1, 0.5, (29 + 64) / 2 / H, 1.0, (64 - 29) / H]], atol=1e-6)
    np.testing.assert_allclose(lab["d"], [[0, 11.5 / W, 11.5 / H, 15 / W, 15 / H]], atol=1e-6)  # horse dropped
    assert lab["e"] == [] and lab["f"] == [] and len(lab["g"]) == 1
    warnings = [line for line in out.splitlines() if "skipped" in line]
    assert len(warnings) == 2  # one line per split (train, val), nothing per file
    w = warnings[0]
    assert "1 image(s) whose XML does not parse" in w and "1 object(s) named 'horse'" in w
    assert "2 zero-area box(es)" in w and "first problem: c.xml" in w
    assert "1 difficult dropped" in out and "1 clipped" in out


def test_difficult_keep_and_names_collected_from_xml(tmp_path, capsys):
    from data.datasets import check_dataset

    ann = {"a": _xml([("zebra", 1, (21, 11, 61, 51)), ("ant", 0, (1, 1, 10, 10))]), "b": _xml([("moth", 0, (1, 1, 9, 9))])}
    y = _voc(tmp_path / "ds", ann, names=None,
             voc_block="voc:\n  images: images\n  annotations: annotations\n  difficult: keep\n")
    data = check_dataset(y, splits=("val",))
    assert data["names"] == {0: "ant", 1: "moth", 2: "zebra"} and data["nc"] == 3
    assert "3 class names collected from the XML" in capsys.readouterr().out
    assert sorted(r[0] for r in _labels(data, "val")["a"]) == [0, 2]  # the difficult zebra kept


def test_bad_voc_block_is_one_line(tmp_path):
    from data.datasets import DataConfigError, check_dataset

    y = _voc(tmp_path / "ds", {"a": _xml([("cat", 0, (1, 1, 9, 9))])},
             voc_block="voc:\n  images: images\n  anotations: annotations\n")
    with pytest.raises(DataConfigError, match="unknown 'voc' key.*anotations"):
        check_dataset(y)
    y.write_text(y.read_text().replace("anotations: annotations", "difficult: ignore"))
    with pytest.raises(DataConfigError, match="'difficult' must be drop or keep"):
        check_dataset(y)
    empty = _voc(tmp_path / "ds2", {"a": "<not xml"})
    with pytest.raises(DataConfigError, match="VOC split 'val' has no usable image") as e:
        check_dataset(empty)
    assert len(str(e.value).splitlines()) == 1


def test_cache_reused_and_invalidated_on_content_change_same_size(tmp_path, capsys):
    from data.datasets import check_dataset

    y = _voc(tmp_path / "ds", {"a": _xml([("cat", 0, (21, 11, 61, 51))]), "b": _xml([("dog", 0, (1, 1, 10, 10))])})
    first = check_dataset(y, splits=("val",))
    mirror = Path(first["val"][0]).parent
    stamp = (mirror / ".complete").stat().st_mtime_ns
    capsys.readouterr()
    again = check_dataset(y, splits=("val",))
    assert again["val"] == first["val"] and (mirror / ".complete").stat().st_mtime_ns == stamp
    assert "from the cache" in capsys.readouterr().out
    xml = tmp_path / "ds" / "annotations" / "a.xml"
    before = xml.read_text()
    after = before.replace("<xmin>21</xmin>", "<xmin>31</xmin>")
    assert len(after) == len(before)
    st = xml.stat()
    xml.write_text(after)
    os.utime(xml, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same date: only the content differs
    changed = check_dataset(y, splits=("val",))
    assert changed["val"] != first["val"] and "converted 2 images" in capsys.readouterr().out
    assert _labels(changed, "val")["a"][0][1] == pytest.approx((30 + 60) / 2 / W)
    assert not mirror.exists()  # the stale mirror of the same split is removed


def test_read_only_dataset_folder(tmp_path):
    from data.datasets import build_val_loader, check_dataset

    root = tmp_path / "ds"
    y = _voc(root, {"a": _xml([("cat", 0, (21, 11, 61, 51))]), "b": _xml([("dog", 0, (1, 1, 10, 10))])})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        data = check_dataset(y, splits=("train", "val"))
        ds = build_val_loader(data, "val", 64, 2, 32, workers=0).dataset
        assert len(ds.labels) == 2 and sum(len(lb["cls"]) for lb in ds.labels) == 2
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the dataset


def test_devkit_layout_like_voc_yaml(tmp_path, monkeypatch):
    """data/VOC.yaml's layout (VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}) through $YOLOC_DATASETS."""
    import yaml

    from data.datasets import DATA_DIR, check_dataset

    dev = tmp_path / "sets" / "VOCdevkit"
    for year, ids in (("VOC2007", ["000005", "000007"]), ("VOC2012", ["2008_000002"])):
        y = dev / year
        (y / "JPEGImages").mkdir(parents=True)
        (y / "Annotations").mkdir()
        (y / "ImageSets" / "Main").mkdir(parents=True)
        for i in ids:
            _image(y / "JPEGImages" / f"{i}.jpg")
            (y / "Annotations" / f"{i}.xml").write_text(_xml([("person", 0, (21, 11, 61, 51)),
                                                              ("cat", 1, (2, 2, 9, 9))]))
        for s in ("train", "val", "test"):
            (y / "ImageSets" / "Main" / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
    d = yaml.safe_load((DATA_DIR / "VOC.yaml").read_text())
    d.pop("download")
    cfg = tmp_path / "VOC.yaml"
    cfg.write_text(yaml.safe_dump(d))
    monkeypatch.setenv("YOLOC_DATASETS", str(tmp_path / "sets"))
    data = check_dataset(cfg, splits=("train", "val"))
    assert data["path"] == str(dev.resolve())
    train = _labels(data, "train")
    assert len(train) == 3
    for rows in train.values():  # the person kept, the difficult cat dropped
        np.testing.assert_allclose(rows, [[14, 40 / W, 30 / H, 40 / W, 40 / H]], atol=1e-6)
    assert len(_labels(data, "val")) == 2


def test_voc_yaml_through_train_val_compress_clis(tmp_path):
    import compress
    import train
    import val

    ann = {f"{i}": _xml([("cat" if i % 2 else "dog", 0, (21, 11, 61, 51))]) for i in range(4)}
    y = str(_voc(tmp_path / "ds", ann))
    common = ["--data", y, "--img", "64", "--batch-size", "4", "--workers", "0"]
    assert train.main(["--cfg", "yolov5n.yaml", "--epochs", "1", "--project", str(tmp_path / "t"), *common]) in (0, None)
    best = next((tmp_path / "t").rglob("last.pt"))
    assert val.main(["--weights", str(best), "--project", str(tmp_path / "v"), *common]) in (0, None)
    assert (next((tmp_path / "v").iterdir()) / "metrics.json").exists()
    assert compress.main(["--weights", str(best), "--method", "l1", "--ratio", "0.2", "--epochs", "0", "--no-latency",
                          "--project", str(tmp_path / "c"), *common]) == 0


@pytest.mark.assets
@need(RACCOON)
def test_raccoon_asset(monkeypatch):
    from data.datasets import check_dataset

    monkeypatch.setenv("YOLOC_DATASETS", str(RACCOON.parent))
    data = check_dataset("raccoon.yaml", splits=("train", "val"))
    assert data["path"] == str(RACCOON) and data["names"] == {0: "raccoon"}
    train, val = _labels(data, "train"), _labels(data, "val")
    assert (len(train), len(val)) == (160, 40)
    assert (sum(map(len, train.values())), sum(map(len, val.values()))) == (173, 44)  # 217 boxes in all
    assert all(0 < v <= 1 for rows in train.values() for r in rows for v in r[1:])


@pytest.mark.assets
@need(YOLOV5N_PT)
@need(RACCOON)
def test_raccoon_trains_from_official_yolov5n(tmp_path, monkeypatch):
    import train

    monkeypatch.setenv("YOLOC_DATASETS", str(RACCOON.parent))
    args = ["--weights", str(YOLOV5N_PT), "--data", "raccoon.yaml", "--epochs", "1", "--img", "96", "--batch-size",
            "16", "--workers", "0", "--hyp", "finetune", "--project", str(tmp_path)]
    assert train.main(args) in (0, None)
    assert next(tmp_path.rglob("best.pt")).is_file()


_num = st.one_of(st.integers(-50, 200).map(str), st.sampled_from(["", "nan", "inf", "1e9", "abc", "-0", "12.5"]))
_obj = st.tuples(st.sampled_from(["cat", "dog", "", " cat ", "é"]), st.sampled_from(["0", "1", "", "x"]),
                 st.tuples(_num, _num, _num, _num))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(objs=st.lists(_obj, max_size=4), size=st.tuples(_num, _num),
       raw=st.one_of(st.none(), st.text(alphabet="<>/ab =\"'&;\n", max_size=30)))
def test_fuzz_voc_xml(objs, size, raw, tmp_path_factory):
    """Any XML content: finite labels inside the image for the known classes, or one DataConfigError line."""
    from data.datasets import DataConfigError, check_dataset

    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objs)
    text = raw if raw is not None else \
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"
    root = tmp_path_factory.mktemp("fuzz")
    try:
        data = check_dataset(_voc(root / "ds", {"a": text}), splits=("val",))
    except DataConfigError as e:
        assert len(str(e).splitlines()) == 1
        return
    for rows in _labels(data, "val").values():
        for r in rows:
            assert r[0] in (0, 1) and all(np.isfinite(r)) and all(0 <= v <= 1 for v in r[1:]) and r[3] > 0 < r[4]
