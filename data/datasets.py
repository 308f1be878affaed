# AGPL-3.0 License
"""Dataset yamls and dataloaders.

Data yamls follow the ultralytics/YOLOv5 format (`path`, `train`, `val`, `test`, `names`). A relative
`path` resolves against the yaml's own folder (then the working directory, as YOLOv5 users expect).
`--data shapes` (or data/shapes.yaml) is the built-in synthetic dataset, generated on first use.
The loaders are ultralytics' YOLODataset with YOLOv5's validation resize (INTER_AREA when shrinking)
so validation reproduces the official YOLOv5 val.py.
"""

from __future__ import annotations

import math
import os
import re
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
    check_names,
    dataset_root,
    find_yaml,
    img_files,
    resolve_split,
)
from data.shapes import ensure_shapes
from data.voc import voc_to_yolo
from utils.general import LOGGER

# re-exported: callers import the data API from here
__all__ = ["DATA_DIR", "IMG_SUFFIXES", "ROOT", "DataConfigError", "build_val_loader", "check_dataset",
           "checked_dataset", "coco_names", "img_files", "is_coco_named"]


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
        kw = {k: d[k] for k in ("n_train", "n_val", "seed") if k in d}
        yaml_path = Path(ensure_shapes(**kw))
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


def _yolo_dataset_cls():
    from ultralytics.data.dataset import YOLODataset

    class ValDataset(YOLODataset):
        """YOLODataset with YOLOv5's eval resize: INTER_AREA when shrinking (ultralytics uses INTER_LINEAR);
        convention 'ultralytics' keeps ultralytics' own (engine.validation.ultralytics)."""

        convention = "yolov5"

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

    return ValDataset


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
