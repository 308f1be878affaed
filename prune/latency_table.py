# AGPL-3.0 License
"""A per-layer latency table on the deployment runtime: what each conv costs at the widths a plan may keep.

For every conv of the model (module name -> its geometry at the traced image size) a one-layer ONNX graph
(Conv + SiLU, random weights, the layer's kernel, stride, padding and input resolution) is timed on the runtime
(`onnxruntime` or `openvino`, `threads` intra-op threads, batch `batch`):

  * out: the layer's time at its full input width for kept output counts on a grid (every count up to 32 channels,
    every 2nd up to 64, every 4th up to 128, ...: at most 32 points), and
  * in: its time at its full output width for four input widths (1/4, 1/2, 3/4 and all of them).

The cost model built from these points (and the kept counts the runtime rewards) is prune/latency.py; the
runtimes are called through utils/runtimes.py. A runtime's fixed per-call overhead (timed once on a one-channel
graph) is subtracted from every point.

The table is cached as JSON under $YOLOC_CACHE/latency/, keyed by runtime, threads, batch, image size and a
fingerprint of the convs' geometry: a second run on the same model reads it instead of timing again.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch.nn as nn

from data.formats import cache_home
from prune.groups import GroupSet
from prune.latency import LatencyTable, fingerprint, in_grid, out_grid
from utils.files import write_json
from utils.general import LOGGER
from utils.runtimes import conv_graph, median_ms, runtime_call

TABLE_VERSION = 1


def table_path(runtime: str, threads: int, batch: int, imgsz: int, arch: str) -> Path:
    return cache_home() / "latency" / f"{runtime}_t{threads}_b{batch}_{imgsz}_{arch}.json"


def load_or_build(model: nn.Module, groups: GroupSet, runtime: str, threads: int, batch: int,
                  imgsz: int) -> tuple[LatencyTable, dict]:
    """The model's table on the runtime, from the cache or timed now (and cached). Returns (table, info) where
    info holds file, cached (bool) and seconds (the build's, 0 when read from the cache)."""
    arch = fingerprint(model, groups)
    path = table_path(runtime, threads, batch, imgsz, arch)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("meta", {}).get("version") == TABLE_VERSION:
                LOGGER.info(f"latency table: {path} (cached)")
                return LatencyTable(saved["meta"], saved["layers"]), {"file": str(path), "cached": True, "seconds": 0.0}
        except (OSError, ValueError):
            pass  # unreadable: timed again below
    t0 = time.time()
    table = build(model, groups, runtime, threads, batch)
    table.meta.update(version=TABLE_VERSION, imgsz=imgsz, arch=arch, seconds=time.time() - t0)
    write_json({"meta": table.meta, "layers": table.layers}, path)
    LOGGER.info(f"latency table: {len(table.layers)} convs timed on {runtime} ({threads} threads, batch {batch}) "
                f"in {time.time() - t0:.1f}s -> {path}")
    return table, {"file": str(path), "cached": False, "seconds": table.meta["seconds"]}


def build(model: nn.Module, groups: GroupSet, runtime: str, threads: int, batch: int) -> LatencyTable:
    """Time every conv of the model alone on the runtime (the module docstring's grid)."""
    mods = dict(model.named_modules())
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="yoloc_lat_") as tmp:
        def time_layer(cin, cout, k, s, p, g, hw) -> float:
            data = conv_graph(cin, cout, k, s, p, g, hw, batch)
            src: str | bytes = data
            if runtime == "openvino":  # OpenVINO reads the ONNX file
                src = str(Path(tmp) / "layer.onnx")
                Path(src).write_bytes(data)
            x = rng.random((batch, cin, *hw), dtype=np.float32)
            return median_ms(runtime_call(runtime, src, threads, x))

        overhead = time_layer(1, 1, (1, 1), (1, 1), (0, 0), 1, (1, 1))
        layers = {}
        for name, ci in groups.graph.conv_info.items():
            m = mods.get(name)
            if ci.kind != "conv" or not isinstance(m, nn.Conv2d) or isinstance(m.padding, str):
                continue
            h = w = int(round(ci.in_hw ** 0.5))
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            geo = (tuple(m.kernel_size), tuple(m.stride), tuple(m.padding))

            def net(cin, cout, dw=dw, geo=geo, m=m, h=h, w=w):
                g = cout if dw else (m.groups if cin % m.groups == 0 and cout % m.groups == 0 else 1)
                return max(time_layer(cout if dw else cin, cout, *geo, g, (h, w)) - overhead, 1e-4)

            # two passes over the grid, the faster median of each point: load from the other processes only slows
            out = [[c, min(net(m.in_channels, c) for _ in range(2))] for c in out_grid(m.out_channels)]
            inn = [] if dw else [[c, min(net(c, m.out_channels) for _ in range(2))] for c in in_grid(m.in_channels)]
            layers[name] = {"cin": m.in_channels, "cout": m.out_channels, "dw": dw, "out": out, "in": inn}
    meta = {"runtime": runtime, "threads": threads, "batch": batch, "overhead_ms": overhead}
    return LatencyTable(meta, layers)
