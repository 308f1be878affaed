# AGPL-3.0 License
"""Select layers and pruning rates from a sensitivity analysis (YOLOv7 iterative pruning, seed 002).

    python val.py --task sensitivity --weights yolov5n.pt --data coco128.yaml --img 320 --pruning-rate "[0.25,0.5,0.75]"
    python layer_selection.py --output runs/sensitivity/exp --params-layers 6 --flops-layers 5 \
        --params-map 20 --flops-map 20

--params / --flops default to the analysed model's (meta.json written by the analysis); the other
defaults are cfg/default.yaml's `sensitivity:` keys. Prints the [(layer, rate), ...] list to pass to
compress.py --pruning-params (at most --params-layers + --flops-layers layers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prune.sensitivity import load_analysis, select_layers
from utils.config import defaults


def main(argv=None) -> int:
    d = defaults("sensitivity")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder of the sensitivity analysis (output_*.txt)")
    p.add_argument("--params", type=float, default=None, help="parameters of the analysed model (default: meta.json)")
    p.add_argument("--flops", type=float, default=None, help="GFLOPs of the analysed model (default: meta.json)")
    p.add_argument("--params-layers", type=int, default=d["params_layers"], help="layers to prune for parameters")
    p.add_argument("--flops-layers", type=int, default=d["flops_layers"], help="layers to prune for FLOPs")
    p.add_argument("--params-map", type=float, default=d["params_map"], help="weight of mAP loss in the params selection")
    p.add_argument("--flops-map", type=float, default=d["flops_map"], help="weight of mAP loss in the FLOPs selection")
    opt = p.parse_args(argv)
    out = Path(opt.output)
    try:
        if opt.params_layers < 0 or opt.flops_layers < 0:
            raise ValueError("--params-layers and --flops-layers must be >= 0")
        results = load_analysis(out)
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
        params = opt.params if opt.params is not None else meta.get("params")
        flops = opt.flops if opt.flops is not None else meta.get("gflops")
        if params is None or flops is None:
            raise ValueError(f"no meta.json in {out}: pass --params and --flops of the analysed model")
    except (FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    chosen = select_layers(results, params, flops, opt.params_layers, opt.flops_layers, opt.params_map,
                           opt.flops_map)
    print(repr(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
