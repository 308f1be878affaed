# AGPL-3.0 License
"""Seed 002's command sequence with the seed's own flags (test.py -> val.py, layer_selection.py, train.py),
and what those flags mean here: task alias, --modification, --prune-output, --pruning-params, layer ids."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import layer_selection
import train
import val
from utils.general import UsageError

# a concatenation-based micro model in YOLOv7's style (ELAN-like concat, MP, IDetect): seed 002's setting
MICRO_V7 = """\
nc: 4
depth_multiple: 1.0
width_multiple: 1.0
anchors:
  - [10,13, 16,30, 33,23]
  - [30,61, 62,45, 59,119]
backbone:
  [[-1, 1, Conv, [16, 3, 2]],
   [-1, 1, Conv, [32, 3, 2]],
   [-1, 1, Conv, [16, 1, 1]],
   [-2, 1, Conv, [16, 1, 1]],
   [-1, 1, Conv, [16, 3, 1]],
   [[-1, -2, -3], 1, Concat, [1]],
   [-1, 1, Conv, [32, 1, 1]],
   [-1, 1, MP, []],
   [-1, 1, Conv, [32, 3, 1]],
   [-1, 1, MP, []],
   [-1, 1, Conv, [64, 3, 1]]]
head:
  [[-1, 1, Conv, [32, 1, 1]],
   [-1, 1, nn.Upsample, [None, 2, 'nearest']],
   [[-1, 8], 1, Concat, [1]],
   [-1, 1, Conv, [32, 3, 1]],
   [[14, 10], 1, IDetect, [nc, anchors]]]
"""


@pytest.fixture(scope="module")
def micro_pt(tmp_path_factory) -> Path:
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("micro")
    (d / "micro-v7.yaml").write_text(MICRO_V7)
    torch.manual_seed(0)
    return save_checkpoint({"model": load_model(d / "micro-v7.yaml", nc=4)}, d / "micro-v7.pt")


def _reference_prune(weights: Path, params, criterion=0):
    """The model pruned directly by the engine (what every step must agree with)."""
    from models.loader import load_model
    from prune.sensitivity import prune_layers
    from prune.surgery import channel_table

    m = load_model(weights)
    info = prune_layers(m, params, criterion, imgsz=64)
    return channel_table(m), info


def test_seed002_sequence_with_its_own_flags(micro_pt, shapes_yaml, tmp_path, monkeypatch, capsys):
    """The README of seed 002, step by step, with its flags (device 0 -> cpu, 640 -> 64 px, one epoch; only
    --workers 0, --no-plots and --epochs are added, for speed)."""
    from models.loader import load_model
    from prune.surgery import channel_table
    from utils.flops import count_params

    monkeypatch.chdir(tmp_path)  # runs/ lands here; the seed's relative --hyp path must still resolve
    w, data = str(micro_pt), str(shapes_yaml)
    test_py = ["--data", data, "--img", "64", "--batch", "32", "--conf", "0.001", "--iou", "0.65", "--device", "cpu"]

    # Testing
    assert val.main([*test_py, "--weights", w, "--name", "micro_64_val", "--workers", "0", "--no-plots"]) == 0
    base = json.loads((tmp_path / "runs/val/micro_64_val/metrics.json").read_text())

    # Sensitivity analysis
    rc = val.main([*test_py, "--task", "pruning_sensitivity_analysis", "--weights", w,
                   "--name", "micro_64_sensitivity", "--modification", "prune-structured", "--prune-output",
                   "output.txt", "--pruning-rate", "[0.25, 0.5, 0.75]", "--workers", "0"])
    assert rc == 0
    out = tmp_path / "runs/sensitivity/micro_64_sensitivity"
    layers = [int(line.split()[0]) for line in (out / "layers.txt").read_text().splitlines()[1:]]
    assert len(layers) >= 8  # every prunable conv of the micro model
    for rate in (0.25, 0.5, 0.75):
        recs = [ast.literal_eval(x) for x in (out / f"output_{rate}.txt").read_text().splitlines()]
        assert [r[0] for r in recs] == layers
        assert all(len(r[1]) == 8 and len(r[1][5]) == 6 and r[1][6] < count_params(load_model(w)) for r in recs)
    meta = json.loads((out / "meta.json").read_text())

    # Selecting layers and pruning rates
    capsys.readouterr()
    assert layer_selection.main(["--output", str(out), "--params", str(meta["params"]), "--flops",
                                 str(meta["gflops"]), "--params-layers", "6", "--flops-layers", "5",
                                 "--params-map", "20", "--flops-map", "20"]) == 0
    selection = capsys.readouterr().out.strip().splitlines()[-1]
    chosen = ast.literal_eval(selection)
    assert 1 <= len(chosen) <= 11 and {k for k, _ in chosen} <= set(layers)
    table, info = _reference_prune(micro_pt, chosen)
    assert info["channels"] > 0

    # Testing with the pruning parameters
    assert val.main([*test_py, "--weights", w, "--name", "micro_64_val", "--modification", "prune-structured",
                     "--pruning-params", selection, "--workers", "0", "--no-plots"]) == 0
    log = capsys.readouterr().out
    assert f"removed {info['channels']} channels in {info['layers']} layers" in log
    pruned = json.loads((tmp_path / "runs/val/micro_64_val2/metrics.json").read_text())  # a new run folder
    assert pruned["params"] < base["params"] and pruned["gflops"] < base["gflops"]

    # Fine-tuning with the pruning parameters (YOLOv7's --img train test and hyp file name)
    assert train.main(["--workers", "8", "--device", "cpu", "--batch-size", "8", "--data", data, "--img", "64", "64",
                       "--weights", w, "--name", "micro-fine-tuned.pt", "--hyp", "data/hyp.scratch.custom.yaml",
                       "--pruning-params", selection, "--criterion", "0", "--epochs", "1"]) == 0
    run = tmp_path / "runs/train/micro-fine-tuned.pt"
    tuned = load_model(run / "weights" / "best.pt")
    assert channel_table(tuned) == table  # pruned at load exactly as the engine prunes, then trained as is
    rec = json.loads((run / "pruning.json").read_text())
    assert rec["criterion"] == "l2" and {int(k) for k in rec["removed"]} == {k for k, _ in chosen}
    assert json.loads(json.dumps(rec["pruning_params"])) == [list(x) for x in chosen]
    assert Path(micro_pt).exists() and load_model(w) is not None  # input weights untouched and loadable


def test_prune_output_names_the_files(micro_pt, shapes_yaml, tmp_path, capsys):
    argv = ["--task", "sensitivity", "--weights", str(micro_pt), "--data", str(shapes_yaml), "--img", "64",
            "--batch", "8", "--workers", "0", "--pruning-rate", "0.5", "--layers", "[0, 1]", "--project",
            str(tmp_path), "--name", "s", "--no-progress"]
    assert val.main([*argv, "--prune-output", "sens.txt"]) == 0
    out = tmp_path / "s"
    assert sorted(p.name for p in out.glob("*_0.5.txt")) == ["sens_0.5.txt"]
    assert json.loads((out / "meta.json").read_text())["stem"] == "sens"
    assert layer_selection.main(["--output", str(out), "--params-layers", "1", "--flops-layers", "1"]) == 0
    assert ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])  # found through meta.json's stem
    # the same folder resumed under another stem would mix two analyses: refused
    assert val.main([*argv, "--prune-output", "other.txt", "--exist-ok"]) == 2
    assert "stem" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [
    (["--task", "sensitivity", "--pruning-params", "[(0, 0.5)]"], "--task sensitivity does not take it"),
    (["--pruning-params", "[(0, 1.5)]"], "rates must be in (0, 1)"),
    (["--pruning-params", "[(0, 0.5)]", "--criterion", "taylor"], "--criterion must be 0-6"),
    (["--pruning-params", "[(999, 0.5)]"], "layer 999 is not a prunable layer"),
    (["--task", "sensitivity", "--prune-output", "a/out.txt"], "--prune-output must be a file name"),
])
def test_val_seed_flag_errors_are_one_line(argv, msg, micro_pt, shapes_yaml, tmp_path, capsys):
    rc = val.main(["--weights", str(micro_pt), "--data", str(shapes_yaml), "--img", "64", "--workers", "0",
                   "--project", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ERROR: ") and msg in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_flags_without_effect_are_flagged(micro_pt, shapes_yaml, tmp_path, capsys):
    rc = val.main(["--weights", str(micro_pt), "--data", str(shapes_yaml), "--img", "64", "--workers", "0",
                   "--project", str(tmp_path), "--no-plots", "--criterion", "2", "--modification", "pruned-structured",
                   "--prune-output", "x.txt"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "WARNING: --prune-output has no effect without --task sensitivity" in out
    assert "WARNING: --criterion, --modification have no effect without --pruning-params" in out
    with pytest.raises(UsageError, match="drop --pruning-params"):
        train.parse_opt(["--resume", "--pruning-params", "0.3"])
    opt = train.parse_opt(["--weights", "x.pt", "--img", "64", "128", "--criterion", "1"])
    out = capsys.readouterr().out
    assert opt.imgsz == 64 and "training and validating at 64" in out and "--criterion has no effect" in out


def test_layer_ids_and_seed_indices():
    """README's mapping: YOLOv7-tiny's layer ids are the seed's conv indices; residual-tied YOLOv5 convs share an
    id (layers.txt lists every conv's seed index)."""
    from models.loader import load_model
    from prune import build_groups
    from prune.sensitivity import seed_conv_indices, show_layers

    m = load_model("yolov7-tiny.yaml", nc=80)
    idx = seed_conv_indices(m)
    groups = build_groups(m, imgsz=64)
    assert len(set(idx.values())) == 58  # 55 convs + the 3 IDetect outputs, as the seed counts them
    assert all({idx[p] for p in g.producers} == {g.id} for g in groups.prunable)
    m5 = load_model("yolov5n.yaml", nc=80)
    lines = show_layers(build_groups(m5, imgsz=64), m5).splitlines()
    assert lines[0].split()[:4] == ["layer", "channels", "MFLOPs/ch", "seed"]
    row = next(r for r in lines if "model.2.cv1.conv, model.2.m.0.cv2.conv" in r)  # C3 residual: 2 convs, 1 id
    assert row.split()[3] == "2,6"
