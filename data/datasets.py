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

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
IMG_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


class DataConfigError(ValueError):
    """A data yaml that cannot be used (missing keys, missing paths, no images); the message is one line."""

    def __init__(self, msg: str):
        super().__init__(" ".join(str(msg).splitlines()))  # values quoted from a yaml may hold line breaks


def _find_yaml(data: str | Path) -> Path:
    p = Path(data)
    candidates = [p, DATA_DIR / p, DATA_DIR / f"{p}.yaml"] if p.suffix not in (".yaml", ".yml") else [p, DATA_DIR / p]
    for c in candidates:
        if c.is_file():
            return c
    raise DataConfigError(f"data yaml '{data}' not found (looked in ./ and {DATA_DIR}); pass --data path/to/data.yaml")


def _resolve_split(root: Path, spec: Any, key: str, yaml_path: Path) -> list[str]:
    specs = spec if isinstance(spec, list) else [spec]
    out = []
    for s in specs:
        q = Path(str(s))
        q = q if q.is_absolute() else root / q
        try:
            found = q.exists()
        except (OSError, ValueError):  # a name too long or with a NUL byte is no path either
            found = False
        if not found:
            hint = f" or download it: python -m data.download {yaml_path}" if _has_download(yaml_path) else ""
            raise DataConfigError(f"data yaml {yaml_path}: '{key}' path {q} does not exist; fix 'path'/'{key}'{hint}")
        out.append(str(q))
    return out


def _has_download(yaml_path: Path) -> bool:
    try:
        return bool((yaml.safe_load(yaml_path.read_text()) or {}).get("download"))
    except (OSError, yaml.YAMLError):
        return False


def check_dataset(data: str | Path | dict, splits: tuple[str, ...] = ("val",)) -> dict:
    """Load and validate a data yaml. Returns a dict with absolute `path`, the requested splits as lists
    of absolute paths, `names` as {int: str} and `nc`. Raises DataConfigError with a one-line message."""
    if isinstance(data, dict):
        d, yaml_path = dict(data), Path(data.get("yaml_file", "<dict>"))
    else:
        yaml_path = _find_yaml(data)
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
        from data.shapes import ensure_shapes

        kw = {k: d[k] for k in ("n_train", "n_val", "seed") if k in d}
        yaml_path = Path(ensure_shapes(**kw))
        d = yaml.safe_load(yaml_path.read_text())

    if d.get("voc") is not None and d.get("voc") is not False:  # Pascal VOC XML: converted once into a cache mirror
        from data.voc import voc_to_yolo

        d = voc_to_yolo(d, _dataset_root(d, yaml_path), yaml_path, splits, _check_names)
    names = _check_names(d, yaml_path)
    root = _dataset_root(d, yaml_path)
    out = {**d, "path": str(root), "names": names, "nc": len(names), "yaml_file": str(yaml_path)}
    for key in splits:
        if not d.get(key):
            raise DataConfigError(f"data yaml {yaml_path} has no '{key}' entry")
        out[key] = _resolve_split(root, d[key], key, yaml_path)
        if not img_files(out[key]):
            raise DataConfigError(f"data yaml {yaml_path}: '{key}' has no images under {', '.join(out[key])}")
    return out


def _check_names(d: dict, yaml_path: Path) -> dict[int, str]:
    """The yaml's `names` (a list or an {index: name} mapping) as {int: str}; DataConfigError when unusable."""
    names = d.get("names")
    if not names:
        raise DataConfigError(f"data yaml {yaml_path} has no 'names': add a list or {{index: name}} mapping of classes")
    if not isinstance(names, (list, dict)):
        raise DataConfigError(f"data yaml {yaml_path}: 'names' must be a list or an {{index: name}} mapping, "
                              f"got {names!r}")
    try:
        names = {i: str(n) for i, n in enumerate(names)} if isinstance(names, list) else \
            {_index(k): str(v) for k, v in names.items()}
    except ValueError:
        names = None
    if names is None or sorted(names) != list(range(len(names))):
        raise DataConfigError(f"data yaml {yaml_path}: 'names' keys must be the class indices 0..{len(d['names']) - 1}")
    if "nc" in d and _index(d["nc"], -1) != len(names):
        raise DataConfigError(f"data yaml {yaml_path}: nc={d['nc']!r} but {len(names)} names are listed")
    return names


def _dataset_root(d: dict, yaml_path: Path) -> Path:
    """`path` as an absolute folder: relative to the yaml's folder, then the working directory, then
    $YOLOC_DATASETS (a folder of datasets: `$YOLOC_DATASETS/<last part of path>`)."""
    root = Path(str(d.get("path") or ""))
    if root.is_absolute():
        return root
    env = os.environ.get("YOLOC_DATASETS")
    try:
        by_yaml = (yaml_path.parent / root).resolve()
        for c in (by_yaml, Path.cwd() / root, Path(env) / root.name if env and root.name else None):
            if c is not None and c.exists():
                return c.resolve()
        return by_yaml
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, a symlink loop
        raise DataConfigError(f"data yaml {yaml_path}: 'path' {d.get('path')!r} is not a usable folder") from None


def _index(v: Any, bad: int | None = None) -> int:
    """An integer-valued yaml scalar (2, '2', 2.0) as int; anything else raises ValueError (or returns `bad`)."""
    try:
        i = int(v)
        if isinstance(v, bool) or i != float(v):
            raise ValueError
        return i
    except (TypeError, ValueError, OverflowError):
        if bad is None:
            raise ValueError(f"not a class index: {v!r}") from None
        return bad


def img_files(paths: list[str]) -> list[str]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMG_SUFFIXES]
        elif p.suffix == ".txt":
            parent = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(str(f if f.is_absolute() else (parent / f).resolve()))
        elif p.suffix.lower() in IMG_SUFFIXES:
            files.append(str(p))
    return files


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
        from utils.general import LOGGER

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
    import os

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
