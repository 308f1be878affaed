# AGPL-3.0 License
"""Export a detector (YOLOv5, YOLOv7, ultralytics; full or pruned) to ONNX, TorchScript, OpenVINO or TensorRT.

Usage:
    python export.py --weights yolov5n.pt --include onnx torchscript openvino --imgsz 640
    python export.py --weights runs/compress/exp/pruned.pt --include onnx --dynamic
    python export.py --weights yolov5n.pt --include onnx openvino --int8 --data coco128.yaml --imgsz 320
    python export.py --weights yolov5n.pt --include engine --half --device 0        # TensorRT, CUDA only

Files go next to the weights (yolov5n.pt -> yolov5n.onnx, yolov5n.torchscript, yolov5n_openvino_model/,
yolov5n.engine; --int8: yolov5n_int8.onnx, yolov5n_int8_openvino_model/), or into runs/export/exp* when the
weights are a model yaml or their folder is not writable. Each FP32/FP16 file is run after export and its outputs
are compared with PyTorch's; INT8 files are judged by the mAP they keep (python val.py --weights <file>).
"""

from __future__ import annotations

import argparse
import sys

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from engine import exporter
from engine.exporter import ExportError
from utils.checkpoint import CheckpointError
from utils.config import defaults
from utils.general import UsageError


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults("export")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=str, required=True, help="checkpoint (.pt, e.g. pruned.pt) or model yaml")
    p.add_argument("--include", nargs="+", default=d["include"], help="formats: onnx torchscript openvino engine")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[d["imgsz"]], help="image (h, w)")
    p.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"], help="batch size")
    p.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or cpu")
    p.add_argument("--half", action="store_true", help="FP16 export (CUDA only; openvino: FP16 weights on any device)")
    p.add_argument("--int8", action="store_true",
                   help="post-training INT8 for onnx (onnxruntime) and openvino (NNCF); needs --data")
    p.add_argument("--data", default=None, help="dataset yaml whose images calibrate --int8 (train split, else val)")
    p.add_argument("--int8-images", type=int, default=d["int8_images"], help="--int8: calibration images (max)")
    p.add_argument("--dynamic", action="store_true", default=d["dynamic"], help="dynamic batch and image size axes")
    p.add_argument("--simplify", action="store_true", default=d["simplify"],
                   help="simplify the ONNX graph (needs onnxslim or onnxsim installed)")
    p.add_argument("--opset", type=int, default=d["opset"], help="ONNX opset version")
    p.add_argument("--project", default=d["project"], help="run folder when the weights folder is not usable")
    p.add_argument("--name", default=d["name"], help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip comparing the files with PyTorch")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    return p.parse_args(argv)


def run(**kw):
    return exporter.run(**kw)


def main(argv=None) -> int:
    try:
        run(**vars(parse_opt(argv)))
    except (UsageError, CheckpointError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
