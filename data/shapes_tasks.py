# AGPL-3.0 License
"""Labels of the built-in shapes data for ultralytics' other tasks, from the same drawn shapes as the boxes.

One row per object, normalized to the image, in ultralytics' label layouts (docs.ultralytics.com/datasets):
  segment  `cls x1 y1 x2 y2 ...`          the outline of the shape as drawn (clipped by the image border)
  pose     `cls xc yc w h px py pv ...`   KPT_SHAPE keypoints: the corners of the square, the cross's inner corners,
                                          the circle's points at 45 degrees, the triangle's 3 vertices padded by one
                                          invisible point; order top-left, top-right, bottom-right, bottom-left
                                          (triangle: clockwise from the vertex nearest the top-left); v = 2 inside
                                          the image, 0 (and x = y = 0) outside
  obb      `cls x1 y1 x2 y2 x3 y3 x4 y4`  the corners of the smallest rotated rectangle around the drawn shape
The shapes are drawn largest first, so an object's outline may be partly covered by a smaller one drawn later:
ultralytics' `overlap_mask` puts smaller masks on top, as here.
"""

from __future__ import annotations

import cv2
import numpy as np

TASKS = ("detect", "segment", "pose", "obb")
KPT_SHAPE = (4, 3)  # keypoints per object, values per keypoint (x, y, visibility)
FLIP_IDX = (1, 0, 3, 2)  # a left-right flip swaps top-left/top-right and bottom-right/bottom-left
_CIRCLE_POINTS = 32  # vertices of a circle's outline when cv2 finds none finer


def _outline(scratch: np.ndarray, cls: int, geom: np.ndarray, draw) -> np.ndarray | None:
    """Pixel outline (N, 2) of the shape as drawn on an all-zero mask of the image size (left all-zero)."""
    draw(scratch, cls, geom, 255)
    contours, _ = cv2.findContours(scratch, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    scratch[:] = 0
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return c if len(c) >= 3 else None


def _keypoints(cls: int, geom: np.ndarray) -> np.ndarray:
    """(4, 2) keypoints in pixels, NaN for a padded point (see the module docstring for which points)."""
    if cls == 0:  # circle
        (cx, cy, r), a = geom[0], np.deg2rad([-135.0, -45.0, 45.0, 135.0])
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
    if cls == 1:  # square: drawn corners are already top-left, top-right, bottom-right, bottom-left
        return geom.astype(np.float64)
    if cls == 3:  # cross: inner corners
        return geom[[11, 2, 5, 8]].astype(np.float64)
    c = geom.mean(0)  # triangle: clockwise (image y down) from the vertex nearest the top-left direction
    ang = np.arctan2(geom[:, 1] - c[1], geom[:, 0] - c[0])
    start = int(np.argmin(np.abs((ang + 3 * np.pi / 4 + np.pi) % (2 * np.pi) - np.pi)))
    order = sorted(range(3), key=lambda i: (ang[i] - ang[start]) % (2 * np.pi))
    return np.vstack([geom[order].astype(np.float64), [[np.nan, np.nan]]])


def task_row(task: str, cls: int, geom: np.ndarray, box: np.ndarray, w: int, h: int, scratch: np.ndarray,
             draw) -> str | None:
    """One label line of `task` for a drawn shape (geometry as data.shapes draws it, tight xyxy box in pixels),
    or None when the shape has no usable outline. `draw(canvas, cls, geom, colour)` is data.shapes' painter."""
    size = np.array([w, h], np.float64)
    x0, y0, x1, y1 = box
    xywh = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
    if task == "detect":
        return f"{cls} " + " ".join(f"{v:.6f}" for v in xywh)
    if task == "pose":
        kpts = _keypoints(cls, geom)
        inside = np.isfinite(kpts).all(1) & (kpts >= 0).all(1) & (kpts[:, 0] < w) & (kpts[:, 1] < h)
        vals = [f"{v:.6f}" for v in xywh]
        for (x, y), ok in zip(kpts, inside):
            vals += [f"{x / w:.6f}", f"{y / h:.6f}", "2"] if ok else ["0.000000", "0.000000", "0"]
        return f"{cls} " + " ".join(vals)
    outline = _outline(scratch, cls, geom, draw)
    if outline is None:
        return None
    if task == "segment":
        pts = (outline + 0.5) / size  # pixel centres
    elif task == "obb":
        pts = cv2.boxPoints(cv2.minAreaRect((outline + 0.5).astype(np.float32))) / size
    else:
        raise ValueError(f"unknown shapes task {task!r}; one of {TASKS}")
    return f"{cls} " + " ".join(f"{v:.6f}" for v in np.clip(pts, 0.0, 1.0).reshape(-1))
