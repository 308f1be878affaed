# AGPL-3.0 License
"""Which ultralytics task a dataset's labels are for, checked against the model's before anything is built.

ultralytics' label layouts (one row per object, normalized): detect `cls xc yc w h`; segment `cls x1 y1 ... xn yn`
(a polygon, n >= 3); pose `cls xc yc w h` + kpt_shape[0] x kpt_shape[1] values, the data yaml giving `kpt_shape`;
obb `cls x1 y1 ... x4 y4`. The built-in shapes data says its task in its yaml (`task:`); other data is recognised
by its yaml (`kpt_shape`) and by the column counts of its first label files. `for_task` returns the data dict with
`task` set: data.datasets' loaders read it (masks for segment, keypoints for pose, rotated boxes for obb).
"""

from __future__ import annotations

from pathlib import Path

from data.formats import DataConfigError, img_files

_EXAMPLE = {"segment": "shapes-seg", "pose": "shapes-pose", "obb": "shapes-obb", "detect": "shapes"}
_SCAN_FILES = 64  # label files read to recognise a dataset's layout


def _label_file(img: str) -> Path:
    """ultralytics' img2label_paths for one image: /images/ -> /labels/, suffix -> .txt."""
    sa, sb = "/images/", "/labels/"
    return Path(sb.join(img.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def label_columns(split: list[str], n_files: int = _SCAN_FILES) -> set[int]:
    """Column counts of the label rows in the first `n_files` label files of a split that have any."""
    cols: set[int] = set()
    seen = 0
    for img in img_files(split):
        f = _label_file(img)
        try:
            rows = [r.split() for r in f.read_text().splitlines() if r.strip()]
        except (OSError, UnicodeDecodeError):
            continue
        if rows:
            cols |= {len(r) for r in rows}
            seen += 1
            if seen >= n_files:
                break
    return cols


def for_task(data: dict, task: str, kpt_shape: tuple | list | None = None, split: str = "val") -> dict:
    """`data` (data.datasets.check_dataset's dict) with `task` set, after checking its labels fit a `task` model.

    kpt_shape: a pose model's (keypoints, values per keypoint). Raises DataConfigError with one line naming what
    the data holds, what the model needs and what to pass instead.
    """
    name = data.get("yaml_file", "data")
    want = f"pass --data with {task} labels (e.g. --data {_EXAMPLE.get(task, 'shapes')})"
    declared = data.get("task")
    if declared is None and data.get("kpt_shape") is not None:
        declared = "pose"
    if declared is not None and declared != task:
        raise DataConfigError(f"{name} holds {declared} labels but the model is a {task} model: {want}")
    if task == "pose":
        if data.get("kpt_shape") is None:
            raise DataConfigError(f"{name} has no kpt_shape but the model is a pose model: {want}")
        if kpt_shape is not None and list(data["kpt_shape"]) != list(kpt_shape):
            raise DataConfigError(f"{name}: kpt_shape {list(data['kpt_shape'])} does not match the model's "
                                  f"{list(kpt_shape)}: pass data with {list(kpt_shape)} keypoints per object")
    elif declared is None and task != "detect" and split in data:
        cols = label_columns(data[split] if isinstance(data[split], list) else [data[split]])
        polygons = {c for c in cols if c >= 7 and c % 2 == 1}
        if cols and not polygons:
            what = "boxes only" if cols == {5} else f"rows of {sorted(cols)} columns"
            raise DataConfigError(f"{name} labels hold {what}, no {'polygons' if task == 'segment' else 'OBB corners'}"
                                  f" for a {task} model: {want}")
        if task == "obb" and cols and cols != {9}:
            raise DataConfigError(f"{name}: OBB labels need 9 columns (cls and 4 corners), found {sorted(cols)}: {want}")
    return {**data, "task": task}
