# AGPL-3.0 License
"""train.py measurements for the README.

  finetune: official yolov5n fine-tuned on COCO128 at 320 with the fine-tune hyp (issue 4: mAP50-95 stays
            >= 0.28; base 0.290), mAP per epoch;
  scratch:  yolov5n from scratch on the built-in shapes dataset: mAP50 per epoch and minutes per epoch.

    python bench/train_bench.py finetune --weights ../shared/assets/weights/yolov5n.pt --data coco128.yaml
    python bench/train_bench.py scratch --epochs 25
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402,F401


def _table(save_dir: Path, seconds: float) -> None:
    import csv

    rows = list(csv.DictReader(open(save_dir / "results.csv")))
    print(f"{'epoch':>6}{'mAP50':>9}{'mAP50-95':>10}")
    for r in rows:
        print(f"{int(r['epoch']) + 1:>6}{float(r['metrics/mAP_0.5'] or 0):>9.3f}{float(r['metrics/mAP_0.5:0.95'] or 0):>10.3f}")
    print(f"{seconds / 60:.2f} min in all, {seconds / 60 / max(len(rows), 1):.2f} min per epoch (incl. validation)")


def main(argv=None) -> int:
    from engine.trainer import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("finetune", "scratch"))
    ap.add_argument("--weights", default="../shared/assets/weights/yolov5n.pt")
    ap.add_argument("--data", default="coco128.yaml")
    ap.add_argument("--img", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix=f"train_bench_{a.what}_"))
    t = time.perf_counter()
    if a.what == "finetune":
        train(weights=a.weights, data=a.data, epochs=a.epochs or 3, imgsz=a.img or 320, batch_size=a.batch,
              hyp="finetune", workers=a.workers, save_dir=str(out))
    else:
        train(cfg="yolov5n.yaml", data="shapes", epochs=a.epochs or 25, imgsz=a.img or 160, batch_size=a.batch,
              hyp="demo", optimizer="AdamW", workers=a.workers, save_dir=str(out))
    _table(out, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
