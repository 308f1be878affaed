# AGPL-3.0 License
"""A pruned YOLOv5/YOLOv7 checkpoint under those repositories' own code (prune.widths.mark_yaml_pruned).

Their train.py builds `Model(cfg or ckpt["model"].yaml)` and copies the tensors whose shapes match: from a pruned
checkpoint that is the unpruned model, mostly re-initialised, unless its yaml refuses the build. Their inference
(attempt_load, DetectMultiBackend) unpickles the model and must keep working.

The official code runs in a subprocess (its `models` package is not ours), found at:
  $YOLOV5_DIR / $YOLOV7_DIR   an official checkout (ultralytics/yolov5, WongKinYiu/yolov7), or the folder of the
                              PyPI package `yolov5` installed apart (CI: `pip install --no-deps --target D
                              yolov5==7.0.14 "setuptools<81" seaborn "huggingface_hub<0.25"`, YOLOV5_DIR=D/yolov5), or
  the PyPI package `yolov5`   installed in the environment the tests run in.
Tests skip when none is there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prune.widths import PRUNED_MARK, PRUNED_MODULE, is_yaml_pruned, mark_yaml_pruned, unmarked_yaml
from tests.conftest import ROOT, TINY_YAML

# what the official code is asked to do with the checkpoint: train.py's build, then both inference loaders
OFFICIAL = r"""
import json, os, sys
root, weights, out = sys.argv[1:4]
sys.path.insert(0, root)
if os.path.exists(os.path.join(root, "__init__.py")):  # the PyPI package: `models` inside it imports `yolov5.*`
    sys.path.insert(1, os.path.dirname(root))
import torch
from models.experimental import attempt_load
from models.yolo import Model

ckpt = torch.load(weights, map_location="cpu", weights_only=False)
res = {}
try:  # train.py (and --resume): model = Model(cfg or ckpt["model"].yaml, ch=3, nc=nc, anchors=hyp.get("anchors"))
    m = Model(ckpt["model"].yaml, ch=3, nc=int(ckpt["model"].nc))
    res["train"] = "built %d parameters" % sum(p.numel() for p in m.parameters())
except Exception as e:
    res["train"] = "%s: %s" % (type(e).__name__, e)
x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
model = attempt_load(weights)  # fuses; YOLOv7: attempt_load(weights, map_location=None)
torch.save(model(x)[0], out + ".attempt_load")
try:
    from models.common import DetectMultiBackend
except ImportError:  # YOLOv7 has attempt_load only
    DetectMultiBackend = None
if DetectMultiBackend is not None:
    torch.save(DetectMultiBackend(weights, device=torch.device("cpu"))(x)[0], out + ".DetectMultiBackend")
print("RESULT " + json.dumps(res))
"""


def _official_root(family: str) -> Path | None:
    env = os.environ.get(f"{family.upper()}_DIR")
    if env:
        return Path(env)
    if family == "yolov5":
        spec = importlib.util.find_spec("yolov5")  # located, not imported: its import puts its folder on sys.path
        if spec is not None and spec.origin:
            return Path(spec.origin).parent
    return None


def _pruned_checkpoint(tmp_path: Path, family: str) -> tuple[Path, torch.nn.Module]:
    from models.loader import load_model
    from prune import build_groups
    from prune.importance import get_criterion
    from prune.plans import plan_uniform
    from prune.surgery import apply_removal
    from utils.checkpoint import save_checkpoint

    if family == "yolov5":
        cfg = tmp_path / "tiny.yaml"
        cfg.write_text(TINY_YAML)
    else:
        cfg = ROOT / "models" / "yolov7-tiny.yaml"
    model = load_model(cfg, nc=4)
    groups = build_groups(model, imgsz=64)
    crit = get_criterion("l1")
    apply_removal(model, groups, plan_uniform(groups, {g.id: crit(model, g) for g in groups.prunable}, ratio=0.5))
    path = tmp_path / "pruned.pt"
    model.requires_grad_(False)  # as compress.py's pruned.pt (YOLOv7's IDetect.fuse updates weights in place)
    save_checkpoint({"model": model.half(), "epoch": -1, "pruning": {"method": "l1"}}, path)
    return path, model.float().eval()


def _run_official(root: Path, weights: Path, tmp_path: Path) -> dict:
    script = tmp_path / "official.py"
    script.write_text(OFFICIAL)
    env = dict(os.environ)
    paths = [q for q in env.get("PYTHONPATH", "").split(os.pathsep) if q and Path(q).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join(paths)  # their `models`/`utils` packages, never ours
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # releases of theirs that call torch.load without weights_only
    r = subprocess.run([sys.executable, str(script), str(root), str(weights), str(tmp_path / "out")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert r.returncode == 0 and line, f"official code failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("family", ["yolov5", "yolov7"])
def test_official_train_refuses_pruned_checkpoint_and_inference_works(tmp_path, family):
    root = _official_root(family)
    if root is None:
        pytest.skip(f"no official {family} code: set {family.upper()}_DIR to a checkout"
                    + (" or install the PyPI package yolov5 (module docstring)" if family == "yolov5" else ""))
    weights, ours = _pruned_checkpoint(tmp_path, family)
    res = _run_official(root, weights, tmp_path)
    # their trainer stops on the first layer, the last traceback line naming the way out
    assert res["train"] == f"NameError: name '{PRUNED_MODULE}' is not defined", res["train"]
    assert "yolo_compress_train_py" in PRUNED_MODULE
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)[0]
    loaders = ["attempt_load"] + (["DetectMultiBackend"] if family == "yolov5" else [])
    for name in loaders:  # their inference runs the pruned model itself: our outputs, up to fusion and fp16 storage
        got = torch.load(tmp_path / f"out.{name}")
        assert got.shape == expected.shape, name
        assert torch.allclose(got, expected, atol=0.05, rtol=0.01), (name, (got - expected).abs().max())


def test_mark_keeps_what_loading_reads_and_is_undone(tmp_path):
    from models.loader import load_model
    from models.yolo import Model

    weights, ours = _pruned_checkpoint(tmp_path, "yolov5")
    fresh = load_model(tmp_path / "tiny.yaml", nc=4)
    d = ours.yaml
    assert is_yaml_pruned(d) and not is_yaml_pruned(fresh.yaml)
    assert d["backbone"][0][2] == PRUNED_MODULE and d[PRUNED_MARK] == {"module": "Conv"}
    assert {k: d[k] for k in ("nc", "anchors", "depth_multiple", "width_multiple", "ch")} == {
        k: fresh.yaml[k] for k in ("nc", "anchors", "depth_multiple", "width_multiple", "ch")}
    assert len(d["backbone"]) == len(fresh.yaml["backbone"]) and d["head"] == fresh.yaml["head"]
    assert unmarked_yaml(d) == fresh.yaml
    before = dict(d, backbone=[list(r) for r in d["backbone"]])
    mark_yaml_pruned(ours)  # idempotent
    assert ours.yaml == before
    with pytest.raises(ValueError, match=PRUNED_MODULE):  # our own builder refuses it too
        Model(d)
    # this toolkit still loads it as the pruned model and sees it as pruned
    loaded = load_model(weights)
    assert loaded.yaml == d and sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in ours.parameters())
    from engine.recipe import pruned_reason
    from utils.checkpoint import save_checkpoint

    bare = save_checkpoint({"model": loaded, "epoch": -1}, tmp_path / "bare.pt")  # no pruning record: widths tell
    assert pruned_reason(bare) == "its convs are narrower than its yaml's"


def test_older_ultralytics_style_mark_on_anchor_yaml_is_redone():
    """Checkpoints pruned by earlier versions carry the ultralytics mark (scale) on a YOLOv5 yaml: re-marking
    replaces it with the one YOLOv5 and YOLOv7 obey."""
    from models.yolo import Model, load_model_yaml

    model = Model(load_model_yaml("yolov5n.yaml"), nc=4)
    original = unmarked_yaml(model.yaml)
    model.yaml.update({"scales": {"model": [0.33, 0.25, 1 << 30]}, "scale": "pruned", PRUNED_MARK: {"scale": None}})
    mark_yaml_pruned(model)
    assert model.yaml[PRUNED_MARK] == {"module": "Conv"} and model.yaml["backbone"][0][2] == PRUNED_MODULE
    assert "scale" not in model.yaml
    assert {k: v for k, v in unmarked_yaml(model.yaml).items() if k != "scales"} == original


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_ultralytics_mark_is_undone(cfg):
    """The ultralytics mark (scale) comes off exactly: the recipe compares a pruned model with the unpruned one."""
    import copy

    from ultralytics.nn.tasks import DetectionModel

    from models.loader import load_model

    model = load_model(cfg, nc=3)
    original = copy.deepcopy(model.yaml)
    mark_yaml_pruned(model)
    assert is_yaml_pruned(model.yaml) and "anchors" not in model.yaml and model.yaml["backbone"] == original["backbone"]
    with pytest.raises(KeyError):
        DetectionModel(copy.deepcopy(model.yaml), nc=3, verbose=False)
    assert unmarked_yaml(model.yaml) == original
    DetectionModel(unmarked_yaml(model.yaml), nc=3, verbose=False)
