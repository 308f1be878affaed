# AGPL-3.0 License
"""Dataset yamls and dataloaders.

Data yamls follow the ultralytics/YOLOv5 format (`path`, `train`, `val`, `test`, `names`). A relative
`path` resolves against the yaml's own folder (then the working directory, as YOLOv5 users expect).
`--data shapes` (or data/shapes.yaml) is the built-in synthetic dataset, generated on first use.
The loaders are ultralytics' YOLODataset with YOLOv5's validation resize (INTER_AREA when shrinking)
so validation reproduces the official YOLOv5 val.py. A dataset whose label folder is read-only keeps its label
cache under $YOLOC_CACHE/labels (as VOC conversions are kept under $YOLOC_CACHE/voc): scanned once, not per loader.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import cv2
import yaml

import utils  # noqa: F401  (keeps ultralytics offline before it is imported)
from data.formats import (
    DATA_DIR,
    IMG_SUFFIXES,
    ROOT,
    DataConfigError,
    cache_home,
    check_names,
    dataset_root,
    find_yaml,
    img_files,
    resolve_split,
)
from data.shapes import ensure_shapes, shapes_spec
from data.voc import voc_to_yolo
from utils.general import LOGGER

# re-exported: callers import the data API from here
__all__ = ["DATA_DIR", "IMG_SUFFIXES", "ROOT", "DataConfigError", "build_train_dataset", "build_val_loader",
           "check_dataset", "checked_dataset", "coco_names", "img_files", "is_coco_named", "label_cache_path",
           "labels_writable"]


def check_dataset(data: str | Path | dict, splits: tuple[str, ...] = ("val",)) -> dict:
    """Load and validate a data yaml. Returns a dict with absolute `path`, the requested splits as lists
    of absolute paths, `names` as {int: str} and `nc`. Raises DataConfigError with a one-line message."""
    if isinstance(data, dict):
        d, yaml_path = dict(data), Path(data.get("yaml_file", "<dict>"))
    else:
        yaml_path = find_yaml(data)
        try:
            text = yaml_path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DataConfigError(f"data yaml {yaml_path} cannot be read: {e}") from None
        try:
            d = yaml.safe_load(text) or {}
        except Exception as e:  # YAMLError, and ValueError & co from scalars such as an impossible date
            raise DataConfigError(f"data yaml {yaml_path} is not valid YAML: {str(e).splitlines()[0] if str(e) else e!r}") from None
        if not isinstance(d, dict):
            raise DataConfigError(f"data yaml {yaml_path} must be a mapping with path/train/val/names keys")
    if d.get("builtin") == "shapes":
        try:
            yaml_path = Path(ensure_shapes(**shapes_spec(d)))
        except ValueError as e:
            raise DataConfigError(f"data yaml {yaml_path}: {e}") from None
        d = yaml.safe_load(yaml_path.read_text())

    if d.get("voc") is not None and d.get("voc") is not False:  # Pascal VOC XML: converted once into a cache mirror
        d = voc_to_yolo(d, dataset_root(d, yaml_path), yaml_path, splits)
    names = check_names(d, yaml_path)
    root = dataset_root(d, yaml_path)
    out = {**d, "path": str(root), "names": names, "nc": len(names), "yaml_file": str(yaml_path)}
    for key in splits:
        if not d.get(key):
            raise DataConfigError(f"data yaml {yaml_path} has no '{key}' entry")
        out[key] = resolve_split(root, d[key], key, yaml_path)
        if not img_files(out[key]):
            raise DataConfigError(f"data yaml {yaml_path}: '{key}' has no images under {', '.join(out[key])}")
    return out


def checked_dataset(make: Callable[[], Any], what: str) -> Any:
    """Build an ultralytics dataset with make(). Label files with a bad class id, NaN, out-of-range
    coordinates or a wrong column count are skipped by ultralytics (each named in its log); here they are
    counted in one warning line, and a split left with no usable image becomes one DataConfigError line."""
    try:
        ds = make()
    except (RuntimeError, ValueError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # ultralytics colours its prefixes
        if "No valid images" not in text and "No labels found" not in text:
            raise
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        first = next((x for x in lines[1:] if "ignoring corrupt" in x), "")
        why = f"; first problem: {first.split('ignoring corrupt image/label: ')[-1]}" if first else ""
        raise DataConfigError(f"{what}: no usable image/label pair ({lines[0]}){why}") from None
    if not ds.im_files:  # older ultralytics only warns and goes on with an empty dataset
        raise DataConfigError(f"{what}: no usable image/label pair (every label file is corrupt, see above)")
    # ultralytics keeps one label file per image found but only the usable images
    ds.n_corrupt = max(len(getattr(ds, "label_files", ds.im_files)) - len(ds.im_files), 0)
    if ds.n_corrupt:
        LOGGER.warning(f"{what}: skipped {ds.n_corrupt} of {ds.n_corrupt + len(ds.im_files)} images whose "
                       "labels are corrupt (bad class id, NaN, coordinates out of range or wrong column count; "
                       "each is named above)")
    return ds


_NOTED_READ_ONLY: set[str] = set()  # label folders already named in the read-only note of this process


def labels_writable(folder: Path) -> bool:
    """Whether a label cache may be written into `folder`: ultralytics' own check (os.access), and a folder whose
    permission bits deny every write counts as read-only even for root (who os.access lets write anywhere)."""
    from ultralytics.data import utils as ul_data  # looked up at call time, so tests can simulate a read-only folder

    try:
        return bool(ul_data.is_dir_writeable(folder)) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def label_cache_path(cache_path: Path) -> Path:
    """Where the label cache of a read-only dataset goes: $YOLOC_CACHE/labels/<name>-<hash of its folder>.cache."""
    key = hashlib.sha256(str(cache_path.resolve()).encode()).hexdigest()[:16]
    return cache_home() / "labels" / f"{cache_path.stem}-{key}.cache"


def _read_only_cache(cache_path: Path, cache_hash: str, version: str) -> tuple[Path, dict | None]:
    """A read-only dataset's label cache: the dataset's own file when it is valid (shipped with it), else the
    mirror under $YOLOC_CACHE (None: not there yet, or stale). The note is printed once per folder and process."""
    from ultralytics.data.utils import load_dataset_cache_file

    for path in (cache_path, label_cache_path(cache_path)):
        try:
            cache = load_dataset_cache_file(path)
            if cache["version"] == version and cache["hash"] == cache_hash:
                return path, cache
        except Exception:  # missing, stale, or unreadable (a truncated file): scan again
            continue
    folder = str(cache_path.parent)
    if folder not in _NOTED_READ_ONLY:
        _NOTED_READ_ONLY.add(folder)
        LOGGER.info(f"label folder {folder} is read-only: its label cache is kept in {label_cache_path(cache_path)}")
    return label_cache_path(cache_path), None


@lru_cache(maxsize=None)
def _yolo_dataset_cls():
    from ultralytics.data.dataset import DATASET_CACHE_VERSION, YOLODataset

    class Dataset(YOLODataset):
        """ultralytics' YOLODataset with two changes: YOLOv5's eval resize (INTER_AREA when shrinking; ultralytics
        uses INTER_LINEAR; convention 'ultralytics' keeps ultralytics' own, engine.validation.ultralytics), and the
        label cache of a read-only dataset kept under $YOLOC_CACHE, so its labels are scanned once, not by every
        loader of every run."""

        convention = "yolov5"

        def _load_or_scan_cache(self, cache_path: Path, cache_hash: str) -> tuple[dict, bool]:
            if labels_writable(cache_path.parent):
                return super()._load_or_scan_cache(cache_path, cache_hash)
            path, cache = _read_only_cache(cache_path, cache_hash, DATASET_CACHE_VERSION)
            if cache is not None:
                return cache, True
            path.parent.mkdir(parents=True, exist_ok=True)
            return self.cache_labels(path), False

        def load_image(self, i, rect_mode=True, resize_short=False):
            if self.augment or self.convention != "yolov5":
                return super().load_image(i, rect_mode, resize_short)
            f = self.im_files[i]
            im = cv2.imread(f)
            if im is None:
                raise FileNotFoundError(f"image not found or unreadable: {f}")
            h0, w0 = im.shape[:2]
            r = self.imgsz / max(h0, w0)
            if r != 1:
                interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA
                im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
            return im, (h0, w0), im.shape[:2]

    return Dataset


def build_train_dataset(cfg: Any, img_path: str | list[str], batch: int, data: dict, stride: int = 32):
    """The augmenting training dataset: ultralytics' build_yolo_dataset(cfg, img_path, batch, data, mode='train',
    stride=stride) for the task data.tasks.for_task set in `data` (detection by default), built on this module's
    dataset class (a read-only dataset's label cache goes to $YOLOC_CACHE). `cfg`: ultralytics' config namespace
    (imgsz, rect, cache, single_cls, classes, fraction and the augmentation hyperparameters)."""
    from ultralytics.utils import colorstr

    return _yolo_dataset_cls()(
        img_path=img_path, imgsz=cfg.imgsz, batch_size=batch, augment=True, hyp=cfg, rect=bool(cfg.rect),
        cache=cfg.cache or None, single_cls=cfg.single_cls or False, stride=int(stride), pad=0.0,
        prefix=colorstr("train: "), task=data.get("task", "detect"), classes=cfg.classes, data=data,
        fraction=cfg.fraction)


def build_val_loader(data: dict, split: str, imgsz: int, batch_size: int, stride: int, workers: int = 8,
                     single_cls: bool = False, rect: bool = True, pad: float = 0.5, convention: str = "yolov5"):
    """Deterministic eval loader (rectangular batches, letterbox, no augmentation); convention: the validation
    convention's image resize ('yolov5' or 'ultralytics', see engine.validation.ultralytics; validate() switches it).
    Labels become class 0 with `single_cls` or when the data dict carries single_cls: True (compress.py
    --single-cls)."""
    single_cls = single_cls or bool(data.get("single_cls"))
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader

    hyp = get_cfg()
    dataset = checked_dataset(lambda: _yolo_dataset_cls()(
        img_path=data[split],
        imgsz=imgsz,
        batch_size=batch_size,
        augment=False,
        hyp=hyp,
        rect=rect,
        cache=False,
        single_cls=single_cls,
        stride=int(stride),
        pad=pad,
        prefix=f"{split}: ",
        task=data.get("task", "detect"),
        data={**data, "channels": 3},
    ), f"{data.get('yaml_file', 'data')} '{split}'")
    dataset.convention = convention
    workers = min(workers, os.cpu_count() or 1, batch_size)
    return build_dataloader(dataset, batch_size, workers, shuffle=False, rank=-1)


def coco_names() -> list[str]:
    with open(DATA_DIR / "coco.yaml") as f:
        names = yaml.safe_load(f)["names"]
    return list(names.values()) if isinstance(names, dict) else list(names)


def is_coco_named(names: dict[int, str]) -> bool:
    """True for any 80-class dataset with COCO's class names in COCO's order (COCO, COCO128, subsets...)."""
    try:
        return [names[i] for i in range(len(names))] == coco_names()
    except (FileNotFoundError, KeyError):
        return False
