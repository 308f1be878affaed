# AGPL-3.0 License
"""Run a detector (YOLOv5, YOLOv7, ultralytics; full or pruned) on images or videos and save annotated copies.

Usage:
    python detect.py --weights yolov5n.pt --source img.jpg                        # an image
    python detect.py --weights runs/compress/exp/pruned.pt --source path/to/dir/  # a folder
    python detect.py --weights best.pt --source 'path/*.jpg' --save-txt --save-conf   # a glob, YOLO labels
    python detect.py --weights best.pt --source vid.mp4 --classes 0 2             # a video, some classes
    python detect.py --weights best.pt --source list.txt --save-crop              # a .txt list of files
"""

from __future__ import annotations

import argparse
import sys

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from engine.predictor import run
from utils.checkpoint import CheckpointError
from utils.config import defaults
from utils.general import UsageError


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults("detect")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=str, required=True, help="checkpoint (.pt, full or pruned), model yaml, or exported model (.onnx, *_openvino_model/, "
                        ".torchscript, .engine)")
    p.add_argument("--source", type=str, required=True,
                   help="an image, a folder, a glob, a video file or a .txt list of them")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[d["imgsz"]],
                   help="inference size h,w (pixels; one value for both)")
    p.add_argument("--conf-thres", type=float, default=d["conf_thres"], help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=d["iou_thres"], help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=d["max_det"], help="maximum detections per image")
    p.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="show results (a warning where there is no display)")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt (YOLO format)")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes in crops/<class>/")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", default=d["project"], help="save results to project/name")
    p.add_argument("--name", default=d["name"], help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", type=int, default=d["line_thickness"], help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    opt = p.parse_args(argv)
    if len(opt.imgsz) > 2 or min(opt.imgsz) <= 0:
        raise UsageError(f"--imgsz takes one or two positive sizes (h w), got {opt.imgsz}")
    if opt.line_thickness < 1:
        raise UsageError(f"--line-thickness must be >= 1, got {opt.line_thickness}")
    return opt


def main(argv=None) -> int:
    try:
        opt = parse_opt(argv)
        run(**vars(opt))
    except (UsageError, CheckpointError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
