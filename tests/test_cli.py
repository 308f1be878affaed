# AGPL-3.0 License
"""Issue 17 items 4 and 8 through the command lines: --help that answers, --ignore as a user types it,
--single-cls, the class-count hint, the built-in data named, the assets folder from an environment variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import compress
import train
import val


def _help(module, capsys) -> str:
    with pytest.raises(SystemExit):
        module.parse_opt(["--help"])
    return capsys.readouterr().out


def test_compress_help(capsys):
    from prune.methods import METHOD_NAMES as ONE_SHOT_METHODS

    text = _help(compress, capsys)
    flat = " ".join(text.split())  # argparse wraps lines
    assert "With no arguments, compress.py runs the offline demo" in flat
    method = flat.rsplit("--method {", 1)[1].split("--criterion", 1)[0]  # the option's entry, not the usage
    assert all(m in method.split() or f"{m}," in method or f"{m};" in method or f"({m}" in method
               for m in ONE_SHOT_METHODS), method
    assert "(default: pagcp)" in method and "(default: 64)" in flat.rsplit("--calib-images CALIB_IMAGES", 1)[1][:300]
    assert "PAGCP's calibration set" in flat
    assert "why the fixed ones cannot be pruned" in flat  # --show-groups, no longer cut mid-sentence
    assert "--divisor DIVISOR round kept channels to a multiple of this: 8 or 16" in flat
    assert "(default: on)" in flat.rsplit("--no-prefix-cache", 1)[1][:200]
    for title in ("data and model", "method", "PAGCP", "Group Fisher", "fine-tuning", "output"):
        assert f"\n{title}" in text, title  # argument groups


@pytest.mark.parametrize("module", [train, val])
def test_train_and_val_help_show_defaults(module, capsys):
    text = " ".join(_help(module, capsys).split())
    assert "(default: shapes)" in text and "built-in" in text
    assert "(default: True)" not in text  # switches never print a misleading default


def test_val_without_data_names_the_builtin_set(capsys):
    val.parse_opt(["--weights", "w.pt"])
    assert "no --data: validating on the built-in shapes dataset" in capsys.readouterr().out
    val.parse_opt(["--weights", "w.pt", "--data", "shapes"])
    assert "no --data" not in capsys.readouterr().out


def test_compress_ignore_module_freezes_its_groups(shapes_yaml, tmp_path, capsys):
    """`--ignore model.9` keeps SPPF whole and says which groups it froze."""
    rc = compress.main(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                        "--method", "l1", "--ratio", "0.5", "--ignore", "model.9", "--epochs", "0", "--bn-recalib", "0",
                        "--no-latency", "--workers", "0", "--project", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "--ignore model.9: froze 2 group(s): 24 (model.9.cv1.conv); 25 (model.9.cv2.conv)" in out
    channels = json.loads((tmp_path / "exp" / "channels.json").read_text())
    assert channels["model.9.cv1.conv"]["out"] == 128 and channels["model.9.cv2.conv"]["out"] == 256
    assert channels["model.8.cv1.conv"]["out"] < 128  # the rest was pruned


def test_compress_single_cls_and_class_count_hint(shapes_yaml, tmp_path, capsys):
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    w = save_checkpoint({"model": load_model("yolov5n.yaml", nc=2)}, tmp_path / "two.pt")  # the data has 4 classes
    args = ["--weights", str(w), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method", "l1",
            "--ratio", "0.3", "--no-latency", "--workers", "0", "--project", str(tmp_path / "runs"), "--bn-recalib",
            "0", "--hyp", "scratch-low"]
    assert compress.main([*args, "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("predicts 2 classes but " + str(shapes_yaml) + " has 4: pass the matching --data "
                        "(or --single-cls)") and len(err.splitlines()) == 1
    assert compress.main([*args, "--epochs", "1", "--single-cls"]) == 0
    s = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert s["rounds"][0]["model"] == "weights/best.pt"
    assert load_model(tmp_path / "runs" / "exp" / "pruned.pt").nc == 1  # fine-tuned single-class, as YOLOv5's train


def test_assets_folder_from_environment(tmp_path):
    code = "import sys; sys.path.insert(0, 'tests'); import conftest; print(conftest.ASSETS)"
    env = {**os.environ, "YOLOC_ASSETS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)
