# AGPL-3.0 License
"""detect.py: run a detector (YOLOv5, YOLOv7, ultralytics; full or pruned) on images and videos and save
annotated copies, as YOLOv5's detect.py does.

Sources: an image, a folder, a glob, a video file, or a .txt list of any of these (ultralytics'
LoadImagesAndVideos). Weights: a checkpoint, a model yaml, or an exported model (engine.backends; a fixed-shape
export gets every frame letterboxed to its shape). Each frame is letterboxed to a stride-aligned minimal rectangle, run through the
model, and decoded with the same output adapter and NMS as val.py (engine.validation.common.to_nms_format and
ultralytics' non_max_suppression; end-to-end heads skip NMS there). Outputs go to runs/detect/exp*:
annotated images and videos (.mp4), labels/*.txt in YOLOv5's format (class x_center y_center width height
[conf], normalized to the image size), crops/<class>/*.jpg. Drawing is ultralytics' Annotator and
save_one_box; labels are drawn with OpenCV's built-in font, or, for non-ASCII class names, with the
DejaVu Sans font matplotlib ships, so nothing is downloaded. Every file is written atomically.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision  # noqa: F401  ultralytics uses torchvision's NMS only if already imported
import ultralytics.utils.plotting as plotting
from ultralytics.data.augment import LetterBox
from ultralytics.data.loaders import LoadImagesAndVideos
from ultralytics.utils.checks import check_imshow
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import process_mask, scale_boxes, xyxy2xywh
from ultralytics.utils.plotting import Annotator, colors, save_one_box

from engine.backends import ExportedModel, is_exported, load_exported
from engine.validation.common import to_nms_format
from models.loader import load_model, model_task
from utils.files import atomic_output, write_bytes, write_text
from utils.flops import model_summary
from utils.general import LOGGER, UsageError, check_imgsz, increment_path, select_device

SOURCES = "an image, a folder, a glob, a video file or a .txt list of them"


def label_lines(det: torch.Tensor, shape: tuple[int, int], save_conf: bool = False) -> list[str]:
    """YOLOv5 --save-txt lines for det (n, 6+) rows x1, y1, x2, y2 (pixels of an image of shape (h, w)),
    conf, class: 'class xc yc w h' normalized to (0, 1), plus ' conf' with save_conf, formatted '%g'."""
    if not len(det):
        return []
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]
    xywh = (xyxy2xywh(det[:, :4].float().cpu()) / gn).tolist()
    lines = []
    for (conf, cls), b in zip(det[:, 4:6].tolist(), xywh):
        row = (cls, *b, conf) if save_conf else (cls, *b)
        lines.append(("%g " * len(row)).rstrip() % row)
    return lines


def unique_file(path: Path) -> Path:
    """path, else path with 2, 3, ... before the suffix (YOLOv5's names for repeated crops)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.stem}{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}{n}{path.suffix}")


def save_image(path: Path, im: np.ndarray) -> Path:
    """Encode im (BGR) by path's suffix (JPEG when OpenCV cannot write that format) and write it atomically."""
    try:
        ok, buf = cv2.imencode(path.suffix, im)
    except cv2.error:
        ok = False
    if not ok:
        path = path.with_suffix(".jpg")
        ok, buf = cv2.imencode(".jpg", im)
    write_bytes(path, buf.tobytes())
    return path


class VideoSink:
    """An annotated video written as it is read: frames go to a temporary .mp4 next to the target, renamed
    into place when the video ends (close), removed if the run stops early (abort)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = path
        self._cm: AbstractContextManager = atomic_output(path)
        tmp = self._cm.__enter__()
        self.writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps if fps > 0 else 30.0, size)
        if not self.writer.isOpened():
            self.abort()
            raise UsageError(f"OpenCV cannot write {path} (no mp4v encoder in this OpenCV build); use --nosave")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def close(self) -> None:
        self.writer.release()
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        self.writer.release()
        self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file


def _annotator_factory(names: dict[int, str], line_width: int | None):
    """Annotator per image: OpenCV text for ASCII names, else PIL with matplotlib's bundled DejaVu Sans
    (ultralytics would fetch Arial.Unicode.ttf for non-ASCII names)."""
    if all(n.isascii() for n in names.values()):
        return lambda im: Annotator(im, line_width=line_width, pil=False, example="abc")
    import matplotlib

    font = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")  # the file matplotlib ships
    return lambda im: _pil_annotator(im, line_width, font)


def _pil_annotator(im, line_width: int | None, font: str):
    """ultralytics' PIL Annotator with a font file: its check_font looks the file's name up in matplotlib's font
    list and, when that list does not hold the path (it can be rebuilt without it), downloads it by name. A file
    needs no lookup, so the lookup is skipped for files only (names still go through ultralytics)."""
    lookup = plotting.check_font
    plotting.check_font = lambda f="Arial.ttf": f if Path(str(f)).is_file() else lookup(f)
    try:
        return plotting.Annotator(im, line_width=line_width, font=font, pil=True, example="abc")
    finally:
        plotting.check_font = lookup


def _counts(det: torch.Tensor, names: dict[int, str]) -> str:
    if not len(det):
        return "(no detections)"
    out = []
    for c in det[:, 5].unique():
        n = int((det[:, 5] == c).sum())
        out.append(f"{n} {names.get(int(c), int(c))}{'s' * (n > 1)}")
    return ", ".join(out)


def _loader(source: str):
    s = str(source)
    if s.isnumeric() or "://" in s or s.endswith(".streams"):
        raise UsageError(f"--source {s}: webcams and streams are not supported; give {SOURCES}")
    try:
        return LoadImagesAndVideos(s, batch=1)
    except FileNotFoundError as e:
        raise UsageError(f"--source {s}: {' '.join(str(e).split())}; give {SOURCES}") from None


@torch.no_grad()
def run(
    weights,
    source,
    imgsz=(640, 640),
    conf_thres=0.25,
    iou_thres=0.45,
    max_det=1000,
    device="",
    view_img=False,
    save_txt=False,
    save_conf=False,
    save_crop=False,
    nosave=False,
    classes=None,
    agnostic_nms=False,
    project="runs/detect",
    name="exp",
    exist_ok=False,
    line_thickness=3,
    hide_labels=False,
    hide_conf=False,
    half=False,
    trust_checkpoint=False,
    model=None,
) -> tuple[Path, list[dict]]:
    """Detect objects in `source` ({SOURCES}); returns (save_dir, results), one result per image or video
    frame: {'path', 'frame' (1-based, 0 for images), 'shape' (h, w) pixels, 'det' (n, 6) float array of
    x1, y1, x2, y2 (pixels), conf, class}. imgsz: int or (h, w) pixels, rounded up to the model's stride.
    Raises UsageError for a missing source, a class id the model does not predict, or bad thresholds;
    CheckpointError for unusable weights."""
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise UsageError("--conf-thres and --iou-thres must be in [0, 1]")
    if max_det < 1:
        raise UsageError(f"--max-det must be >= 1, got {max_det}")
    device = select_device(device)
    if half and device.type != "cuda":
        LOGGER.warning("WARNING: --half needs a CUDA device: running in FP32 on the CPU")
        half = False
    model, names = _model(weights, trust_checkpoint, classes, model, device)
    loader = _loader(source)
    exported = isinstance(model, ExportedModel)
    half = half and not exported  # an exported file runs at the precision it was exported in
    model.to(device).eval()
    model.half() if half else model.float()
    seg = model_task(model) == "segment"  # masks drawn under the boxes; label files keep the boxes
    stride = int(max(model.stride.max(), 32))
    hw = image_shape(imgsz, stride)
    if exported and not model.dynamic:
        hw = list(model.imgsz)  # a fixed-shape file: every frame letterboxed to its shape
    LOGGER.info(f"{model.file} ({model.format} {model.precision.upper()})" if exported else
                model_summary(model, max(hw))[2])
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)  # only once the inputs are usable
    if view_img and not check_imshow(warn=False):
        LOGGER.warning("WARNING: --view-img: no display here (no DISPLAY, or OpenCV built without GUI); "
                       "nothing is shown, the annotated files are still saved")
        view_img = False
    annotator = _annotator_factory(names, line_thickness)
    letterbox = LetterBox(hw, auto=not exported or model.dynamic, stride=stride)
    dt, results, sinks, n_labels = [0.0, 0.0, 0.0], [], {}, 0
    try:
        for paths, im0s, infos in loader:
            p, im0, info = Path(paths[0]), im0s[0], infos[0]
            video = loader.mode == "video"
            frame = getattr(loader, "frame", 0) if video else 0
            t0 = time.perf_counter()
            im = np.ascontiguousarray(letterbox(image=im0)[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
            im = torch.from_numpy(im).to(device)[None]
            im = (im.half() if half else im.float()) / 255
            t1 = time.perf_counter()
            out = model(im)
            t2 = time.perf_counter()
            det = non_max_suppression(to_nms_format(out, model).float(), conf_thres, iou_thres, classes=classes,
                                      agnostic=agnostic_nms, max_det=max_det, nc=int(model.nc) if seg else 0)[0]
            masks = process_mask(out[0][1][0], det[:, 6:], det[:, :4], im.shape[2:], upsample=True) \
                if seg and len(det) else None  # (n, h, w) on the letterboxed image
            t3 = time.perf_counter()
            dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, t3 - t2))]
            det = det[:, :6].clone()
            det[:, :4] = scale_boxes(im.shape[2:], det[:, :4], im0.shape).round()
            results.append({"path": str(p), "frame": frame, "shape": im0.shape[:2], "det": det.cpu().numpy()})
            LOGGER.info(f"{info}{im.shape[2]}x{im.shape[3]} {_counts(det, names)}, {(t2 - t1) * 1e3:.1f}ms")

            stem = p.stem + (f"_{frame}" if video else "")
            if save_txt and len(det):
                write_text(save_dir / "labels" / f"{stem}.txt", "\n".join(label_lines(det, im0.shape[:2], save_conf)) + "\n")
                n_labels += 1
            ann = annotator(im0)
            if masks is not None and (not nosave or view_img):
                ann.masks(masks, colors=[colors(int(c), True) for c in det[:, 5]])  # letterbox removed by ultralytics
            im0 = _draw(ann, im0, det, names, p, save_dir, draw=not nosave or view_img, crop=save_crop,
                        hide_labels=hide_labels, hide_conf=hide_conf)
            if view_img:
                cv2.imshow(str(p), im0)
                cv2.waitKey(1)
            if nosave:
                continue
            if not video:
                save_image(save_dir / p.name, im0)
                continue
            if str(p) not in sinks:
                for k in list(sinks):  # the previous video has ended
                    sinks.pop(k).close()
                sinks[str(p)] = VideoSink((save_dir / p.name).with_suffix(".mp4"), loader.fps, im0.shape[1::-1])
            sinks[str(p)].write(im0)
        for k in list(sinks):
            sinks.pop(k).close()
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    finally:
        getattr(loader, "close", lambda: None)()  # releases an open video (ultralytics >= 8.4)
    n = max(len(results), 1)
    LOGGER.info(f"Speed: {dt[0] * 1e3 / n:.1f}ms pre-process, {dt[1] * 1e3 / n:.1f}ms inference, "
                f"{dt[2] * 1e3 / n:.1f}ms NMS per image at shape (1, 3, {hw[0]}, {hw[1]})")
    saved = f", {n_labels} label files in {save_dir / 'labels'}" if save_txt else ""
    LOGGER.info(f"Results saved to {save_dir}{saved}")
    return save_dir, results


def _model(weights, trust: bool, classes, model=None, device="cpu") -> tuple:
    """(fused model or engine.backends.ExportedModel, {class index: name}); raises UsageError for a --classes id
    the model does not predict."""
    if model is None and is_exported(weights):
        model = load_exported(weights, device)
    elif model is None:
        model = load_model(weights, trust=trust, fuse=True)
    names = {int(k): str(v) for k, v in model.names.items()}
    bad = sorted({int(c) for c in classes or []} - set(names))
    if bad:
        raise UsageError(f"--classes {' '.join(map(str, bad))}: this model predicts classes 0-{len(names) - 1}")
    return model, names


def image_shape(imgsz, stride: int) -> list[int]:
    """--imgsz (int or (h, w) pixels) as [h, w] rounded up to the model's max stride; one warning line per size
    that changes (utils.general.check_imgsz)."""
    h, w = (([imgsz] if isinstance(imgsz, int) else list(imgsz)) * 2)[:2]
    h2 = check_imgsz(h, stride)
    return [h2, h2 if w == h else check_imgsz(w, stride)]


def _draw(ann, im0: np.ndarray, det: torch.Tensor, names: dict[int, str], p: Path, save_dir: Path, draw: bool,
          crop: bool, hide_labels: bool, hide_conf: bool) -> np.ndarray:
    """Boxes and labels drawn on a copy of im0 (when `draw`), crops saved under save_dir/crops/<class>/; returns
    the annotated image."""
    imc = im0.copy() if crop else None
    for *xyxy, conf, cls in det.tolist():
        c = int(cls)
        if draw:
            label = "" if hide_labels else (names[c] if hide_conf else f"{names[c]} {conf:.2f}")
            ann.box_label(xyxy, label, color=colors(c, True))
        if crop:
            box = save_one_box(torch.tensor(xyxy), imc, BGR=True, save=False)
            save_image(unique_file(save_dir / "crops" / names[c] / f"{p.stem}.jpg"), box)
    return ann.result()
