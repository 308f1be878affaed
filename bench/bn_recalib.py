# AGPL-3.0 License
"""Does re-estimating BatchNorm statistics help an *uncut* model? (why compress.py keeps them only if the loss falls)

Validates the model as released, then after re-estimating every BN layer's statistics on N training images,
and prints mAP50-95 and the calibration task losses (on other images) for each.

    python bench/bn_recalib.py --weights ../shared/assets/weights/yolov5n.pt --data coco128.yaml --img 320
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402,F401


def main(argv=None) -> int:
    from engine.compressor import Evaluator
    from data.datasets import check_dataset
    from models.loss import build_criterion
    from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches, recalibrate_bn
    from models.loader import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--img", type=int, default=320)
    ap.add_argument("--images", type=int, nargs="+", default=[64, 128], help="re-estimation set sizes")
    ap.add_argument("--check-images", type=int, default=64, help="calibration images the losses are measured on")
    a = ap.parse_args(argv)
    data = check_dataset(a.data, splits=("train", "val"))
    model = load_model(a.weights).eval()
    evaluate = Evaluator(data, a.img, 32, "cpu", 0)
    criterion = build_criterion(model, None, a.img)
    check = calibration_batches(data, a.img, a.check_images, 16, seed=2)
    rows = [("as released", model)]
    for n in a.images:
        m = copy.deepcopy(model)
        recalibrate_bn(m, calibration_batches(data, a.img, n, 16, seed=1))
        rows.append((f"re-estimated on {n}", m.eval()))
    print(f"\n{'BN statistics':<22}{'mAP50-95':>10}  calibration losses ({', '.join(criterion.names)})")
    for name, m in rows:
        losses = CalibrationOracle(m, check, criterion, list(criterion.names))()
        print(f"{name:<22}{evaluate(m, progress=False).map50_95:>10.3f}  {' '.join(f'{x:.4f}' for x in losses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
