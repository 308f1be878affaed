"""Built-in synthetic dataset ("shapes") so the toolkit runs offline: detection, and the same images labelled for
segmentation, pose and oriented boxes (`shapes-seg`, `shapes-pose`, `shapes-obb`; data.shapes_tasks).

Images are rendered deterministically from a seed (textured background + filled circles, squares,
triangles and crosses) and written in the YOLO layout::

    <cache>/shapes[-seg|-pose|-obb]-v1-<n_train>-<n_val>-<seed>/
        images/{train,val}/NNNNNN.png
        labels/{train,val}/NNNNNN.txt      # "cls xc yc w h", normalized; empty for background images
        shapes.yaml                         # dataset yaml (path/train/val/nc/names)
        .complete                           # marker, written last

Usage::

    from data.shapes import ensure_shapes
    data_yaml = ensure_shapes()             # generates once, then reuses the cache

    python -m data.shapes [--cache-dir D] [--n-train N] [--n-val N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import yaml

from data.shapes_tasks import FLIP_IDX, KPT_SHAPE, TASKS, task_row
from utils.files import current_umask

__all__ = [
    "SHAPES_NAMES",
    "SHAPES_VERSION",
    "shapes_root",
    "shapes_dir",
    "ensure_shapes",
    "render_sample",
    "is_shapes_data",
    "resolve_shapes",
    "SHAPES_TASKS",
]

PathLike = Union[str, "os.PathLike[str]"]

SHAPES_NAMES: list[str] = ["circle", "square", "triangle", "cross"]
SHAPES_VERSION = 1  # bump whenever rendering changes, so stale caches are not reused

# --data name -> the ultralytics task its labels are for
SHAPES_TASKS = {"shapes": "detect", "shapes-seg": "segment", "shapes-pose": "pose", "shapes-obb": "obb"}
_SUFFIX = {task: name[len("shapes"):] for name, task in SHAPES_TASKS.items()}
MARKER = ".complete"
YAML_NAME = "shapes.yaml"
_SPLITS = {"train": 0, "val": 1}
_STALE_TMP_S = 3600.0  # temp folders older than this are leftovers of crashed runs
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]

_MIN_SIDE, _MAX_SIDE = 160, 320
_MAX_OBJECTS = 6
_BG_EVERY = 20  # every 20th image (index % 20 == 7) is background-only
_MIN_LUMA_CONTRAST = 80.0
_BG_MAX_DELTA = 45.0  # max per-channel spread of a background texture around its base colour
_LUMA = np.array([0.114, 0.587, 0.299])  # BGR weights


# ----------------------------------------------------------------------------------------------- paths
def shapes_root(cache_dir: PathLike | None = None) -> Path:
    """Cache folder holding generated datasets: `cache_dir`, else $YOLOC_CACHE, else ~/.cache/yolo-compress."""
    if cache_dir is None:
        cache_dir = os.environ.get("YOLOC_CACHE") or Path.home() / ".cache" / "yolo-compress"
    return Path(cache_dir).expanduser().resolve()


def shapes_dir(cache_dir: PathLike | None = None, n_train: int = 256, n_val: int = 64, seed: int = 0,
               task: str = "detect") -> Path:
    """Final (versioned) folder of the dataset generated with these parameters; may not exist yet."""
    if task not in TASKS:
        raise ValueError(f"unknown shapes task {task!r}; one of {TASKS}")
    return shapes_root(cache_dir) / f"shapes{_SUFFIX[task]}-v{SHAPES_VERSION}-{int(n_train)}-{int(n_val)}-{int(seed)}"


# ----------------------------------------------------------------------------------------------- rendering
def _luma(color: np.ndarray) -> float:
    return float(np.dot(color, _LUMA))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured uint8 BGR background (gradient, stripes, blurred noise or checker) of shape (h, w, 3)."""
    base = rng.uniform(40.0, 215.0, 3)
    alt = np.clip(base + rng.uniform(-_BG_MAX_DELTA, _BG_MAX_DELTA, 3), 0.0, 255.0)
    kind = int(rng.integers(4))
    yy, xx = np.ogrid[0:h, 0:w]
    yy = yy.astype(np.float32)
    xx = xx.astype(np.float32)
    theta = rng.uniform(0.0, np.pi)
    proj = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))  # (h, w)
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
    elif kind == 1:  # soft stripes
        period = rng.uniform(8.0, 40.0)
        t = 0.5 + 0.5 * np.sin(proj * np.float32(2.0 * np.pi / period))
    elif kind == 2:  # blurred noise: low-res noise upsampled (cheaper than a big Gaussian blur)
        cell = int(rng.integers(8, 33))
        small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    else:  # checker
        cell = int(rng.integers(10, 41))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    # Blend base->alt through a 256-entry palette: much faster than float blending per pixel.
    t8 = np.ascontiguousarray(np.broadcast_to(np.clip(t * 255.0 + 0.5, 0, 255), (h, w)).astype(np.uint8))
    s = np.linspace(0.0, 1.0, 256)[:, None]
    palette = np.clip(np.rint(base * (1.0 - s) + alt * s), 0, 255).astype(np.uint8)[None]  # (1, 256, 3)
    return cv2.LUT(cv2.merge([t8, t8, t8]), palette)


def _geometry(cls: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Integer geometry in image pixels: polygon vertices (N, 2), or [[cx, cy, radius]] for the circle."""
    if cls == 0:
        return np.array([[round(cx), round(cy), max(round(size / 2.0), 1)]], np.int32)
    if cls == 1:  # square
        r = size / 2.0
        pts = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    elif cls == 2:  # triangle (equilateral, circumradius size/2)
        a = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        pts = size / 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    else:  # cross (plus sign), arm thickness 1/3 of the extent
        r, t = size / 2.0, size / 6.0
        pts = np.array(
            [[-t, -r], [t, -r], [t, -t], [r, -t], [r, t], [t, t], [t, r], [-t, r], [-t, t], [-r, t], [-r, -t], [-t, -t]]
        )
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])
    return np.round(pts).astype(np.int32)


def _draw(canvas: np.ndarray, cls: int, g: np.ndarray, color) -> None:
    """Fill the shape with integer geometry `g` (see `_geometry`) on `canvas`."""
    if cls == 0:
        cv2.circle(canvas, (int(g[0, 0]), int(g[0, 1])), int(g[0, 2]), color, -1, cv2.LINE_8)
    else:
        cv2.fillPoly(canvas, [g], color, cv2.LINE_8)


def _tight_box(cls: int, geom: np.ndarray, scratch: np.ndarray) -> np.ndarray | None:
    """Tight xyxy box (pixel edges) of the shape as cv2 draws it on the image, or None if < 3 px wide.

    `scratch` is an all-zero uint8 mask of the image size (left all-zero on return). cv2's clipping of
    shapes that cross the border depends on the canvas size, so measuring on a same-size mask makes the
    box match the drawn pixels exactly; only the shape's neighbourhood is scanned and cleared.
    """
    h, w = scratch.shape
    if cls == 0:
        ((cx, cy, r),) = geom
        lo, hi = np.array([cx - r, cy - r]), np.array([cx + r, cy + r])
    else:
        lo, hi = geom.min(0), geom.max(0)
    xa, ya = max(int(lo[0]) - 2, 0), max(int(lo[1]) - 2, 0)
    xb, yb = min(int(hi[0]) + 3, w), min(int(hi[1]) + 3, h)
    if xb <= xa or yb <= ya:
        return None
    _draw(scratch, cls, geom, 255)
    roi = scratch[ya:yb, xa:xb]
    cols, rows = np.flatnonzero(roi.any(0)), np.flatnonzero(roi.any(1))
    roi[:] = 0
    if cols.size == 0:
        return None
    x0, x1, y0, y1 = xa + int(cols[0]), xa + int(cols[-1]) + 1, ya + int(rows[0]), ya + int(rows[-1]) + 1
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    return np.array([x0, y0, x1, y1], np.float64)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box area (xyxy); catches one box hiding inside another."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / max(smaller, 1e-9))


def _pick_color(rng: np.random.Generator, region_luma: float, under: list[np.ndarray]) -> np.ndarray:
    """Random BGR colour that stands out from the background and from objects it is drawn over."""
    for _ in range(64):
        color = np.round(rng.uniform(0.0, 255.0, 3))
        if abs(_luma(color) - region_luma) >= _MIN_LUMA_CONTRAST and all(
            np.abs(color - u).max() >= 60.0 for u in under
        ):
            return color
    return np.zeros(3) if region_luma > 127.5 else np.full(3, 255.0)


def render_sample(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one image (uint8 BGR, HxWx3) and its labels (K, 5) [cls, xc, yc, w, h] normalized.

    Each sample has its own RNG stream keyed by (seed, split, index), so image i of a split does not
    depend on how many images the dataset has.
    """
    img, objects = render_objects(seed, split, index)
    h, w = img.shape[:2]
    labels = [[cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
              for cls, _, (x0, y0, x1, y1) in objects]
    return img, np.array(labels, np.float64).reshape(-1, 5)


def render_objects(seed: int, split: str, index: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Render one image and its objects in drawing order: (class, integer geometry as `_draw` takes it, tight
    integer xyxy box in pixels); see render_sample."""
    rng = np.random.default_rng([SHAPES_VERSION, int(seed), _SPLITS[split], int(index)])
    w = int(rng.integers(_MIN_SIDE, _MAX_SIDE + 1))
    h = int(rng.integers(_MIN_SIDE, _MAX_SIDE + 1))
    bg = _background(rng, h, w)
    img = bg.copy()
    objects: list[tuple[int, np.ndarray, np.ndarray]] = []

    n_obj = 0 if index % _BG_EVERY == 7 else int(rng.integers(1, _MAX_OBJECTS + 1))
    # Largest first, so smaller shapes are drawn on top and stay visible.
    sizes = np.sort(rng.uniform(0.10, 0.50, n_obj))[::-1] * min(w, h)
    placed: list[tuple[np.ndarray, np.ndarray]] = []  # (box xyxy, colour)
    scratch = np.zeros((h, w), np.uint8)
    for size in sizes:
        cls = int(rng.integers(len(SHAPES_NAMES)))
        # Small rotations keep squares/crosses axis-dominant; triangles may point anywhere.
        angle = rng.uniform(-np.pi, np.pi) if cls == 2 else rng.uniform(-0.3, 0.3)
        margin = 0.35 * size  # centre may sit slightly off-image -> some clipped objects
        for _ in range(10):
            geom = _geometry(cls, rng.uniform(margin, w - margin), rng.uniform(margin, h - margin), size, angle)
            box = _tight_box(cls, geom, scratch)
            if box is not None and all(_overlap(box, b) <= 0.5 for b, _ in placed):
                break
        else:
            continue  # crowded image: drop this object
        x0, y0, x1, y1 = box.astype(int)
        region_luma = _luma(bg[y0:y1, x0:x1].reshape(-1, 3).mean(0))
        color = _pick_color(rng, region_luma, [c for b, c in placed if _overlap(box, b) > 0.0])
        _draw(img, cls, geom, tuple(int(v) for v in color))
        placed.append((box, color))
        objects.append((cls, geom, np.array([x0, y0, x1, y1])))
    return img, objects


# ----------------------------------------------------------------------------------------------- generation
def _dataset_yaml(root: Path, task: str = "detect") -> str:
    header = f"# Built-in synthetic shapes dataset (data/shapes.py, v{SHAPES_VERSION}); generated, do not edit\n"
    body = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(SHAPES_NAMES),
        "names": dict(enumerate(SHAPES_NAMES)),
    }
    if task != "detect":
        body["task"] = task  # which labels these are (ultralytics reads no such key; the toolkit checks it)
    if task == "pose":
        body["kpt_shape"], body["flip_idx"] = list(KPT_SHAPE), list(FLIP_IDX)
    return header + yaml.safe_dump(body, sort_keys=False)


def _write_split(folder: Path, split: str, n: int, seed: int, task: str = "detect") -> int:
    """Write `n` images + label files of one split into `folder`; returns the number of objects labelled."""
    img_dir, lab_dir = folder / "images" / split, folder / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for i in range(n):
        img, objects = render_objects(seed, split, i)
        if not cv2.imwrite(str(img_dir / f"{i:06d}.png"), img, _PNG_PARAMS):
            raise OSError(f"cv2.imwrite failed for {img_dir / f'{i:06d}.png'}")
        h, w = img.shape[:2]
        scratch = np.zeros((h, w), np.uint8)
        rows = [task_row(task, cls, geom, box, w, h, scratch, _draw) for cls, geom, box in objects]
        rows = [r for r in rows if r is not None]
        (lab_dir / f"{i:06d}.txt").write_text("".join(f"{r}\n" for r in rows))
        n_boxes += len(rows)
    return n_boxes


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / YAML_NAME).is_file()


def _remove_stale_tmp(final: Path) -> None:
    """Delete temp folders of crashed runs; recent ones may belong to a live concurrent generator."""
    now = time.time()
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def ensure_shapes(cache_dir: PathLike | None = None, n_train: int = 256, n_val: int = 64, seed: int = 0,
                  task: str = "detect") -> Path:
    """Return the dataset yaml of the shapes dataset labelled for `task` (detect, segment, pose, obb), generating
    it first if it is not cached.

    Generation is atomic: files go to a temporary sibling folder, the marker is written last and the
    folder is renamed into place, so a partially written dataset is never visible under the final name.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    final = shapes_dir(cache_dir, n_train, n_val, seed, task)
    if _is_complete(final):
        return final / YAML_NAME

    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; a published dataset follows the umask
        t0 = time.perf_counter()
        boxes = {s: _write_split(tmp, s, n, seed, task) for s, n in (("train", n_train), ("val", n_val))}
        (tmp / YAML_NAME).write_text(_dataset_yaml(final, task))  # 'path' already points at the final name
        info = {
            "version": SHAPES_VERSION,
            "task": task,
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "boxes": boxes,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / MARKER).write_text(json.dumps(info) + "\n")
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(final):
        raise RuntimeError(f"shapes dataset at {final} is incomplete after generation")
    return final / YAML_NAME


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; if another process already published a complete copy, keep theirs."""
    try:
        os.replace(tmp, final)  # fails if `final` exists and is not empty
        return
    except OSError:
        if _is_complete(final):
            return  # lost the race: caller discards tmp
    # `final` exists but is incomplete (e.g. copied by hand or left by older code): move it aside first.
    trash = final.with_name(f".{final.name}.trash-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(final, trash)
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final):
            raise


# ----------------------------------------------------------------------------------------------- --data hooks
def is_shapes_data(data: object) -> bool:
    """True if `data` names the built-in dataset: 'shapes', 'shapes-seg', ... (SHAPES_TASKS), the same with
    '.yaml', or a yaml with `builtin: shapes`."""
    if isinstance(data, dict):
        return data.get("builtin") == "shapes"
    if not isinstance(data, (str, os.PathLike)):
        return False
    s = os.fspath(data)
    if s in SHAPES_TASKS or s.removesuffix(".yaml") in SHAPES_TASKS:
        return True
    p = Path(s)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        try:
            d = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(d, dict) and d.get("builtin") == "shapes"
    return False


def resolve_shapes(data: object, cache_dir: PathLike | None = None) -> Path | None:
    """If `data` names the built-in dataset, generate/reuse it and return its yaml path; else None.

    Optional `n_train`, `n_val`, `seed` keys of a `builtin: shapes` yaml (or dict) are honoured.
    """
    if not is_shapes_data(data):
        return None
    spec: dict = {}
    if isinstance(data, dict):
        spec = data
    else:
        p = Path(os.fspath(data))
        if not p.is_file() and os.fspath(data).removesuffix(".yaml") in SHAPES_TASKS:
            p = Path(__file__).with_name(f"{os.fspath(data).removesuffix('.yaml')}.yaml")
        if p.is_file():
            spec = yaml.safe_load(p.read_text()) or {}
    return ensure_shapes(cache_dir, **shapes_spec(spec))


def shapes_spec(spec: dict) -> dict:
    """ensure_shapes' keyword arguments from a `builtin: shapes` yaml: n_train, n_val, seed, task (default detect)."""
    kw: dict = {k: int(spec[k]) for k in ("n_train", "n_val", "seed") if k in spec}
    if spec.get("task", "detect") not in TASKS:
        raise ValueError(f"builtin shapes data: unknown task {spec.get('task')!r}; one of {', '.join(TASKS)}")
    kw["task"] = spec.get("task", "detect")
    return kw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate (or reuse) the built-in synthetic shapes dataset.")
    ap.add_argument("--cache-dir", default=None, help="default: $YOLOC_CACHE or ~/.cache/yolo-compress")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="detect", choices=TASKS, help="which labels: boxes, outlines, keypoints, OBB")
    a = ap.parse_args(argv)
    print(ensure_shapes(a.cache_dir, a.n_train, a.n_val, a.seed, a.task))


if __name__ == "__main__":
    main()
