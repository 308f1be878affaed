# AGPL-3.0 License
"""The recovery recipe (engine/recipe.py): train.py --weights <pruned> fine-tunes with it unless flags say otherwise."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import TINY_YAML

LINE = "recovery recipe:"


def _tiny(tmp_path, prune: bool, record: bool):
    from models.loader import load_model
    from prune import build_groups
    from prune.importance import get_criterion
    from prune.surgery import apply_removal
    from prune.plans import plan_uniform
    from utils.checkpoint import save_checkpoint

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    model = load_model(cfg, nc=4)
    removed = {}
    if prune:
        groups = build_groups(model, imgsz=64)
        crit = get_criterion("l1")
        removed = plan_uniform(groups, scores={g.id: crit(model, g) for g in groups.prunable}, ratio=0.5)
        apply_removal(model, groups, removed)
    ckpt = {"model": model.half(), "epoch": -1}
    if record:
        ckpt["pruning"] = {"method": "l1", "round": 0, "removed": removed, "source": "tiny.yaml"}
    path = tmp_path / f"{'pruned' if prune else 'base'}{'_rec' if record else ''}.pt"
    save_checkpoint(ckpt, path)
    return path


@pytest.mark.parametrize("prune,record,why", [(True, True, "pruning record"), (True, False, "narrower"),
                                              (False, False, None)])
def test_pruned_checkpoint_gets_recipe_by_default(tmp_path, capsys, prune, record, why):
    import train
    from engine.recipe import recipe

    w = _tiny(tmp_path, prune, record)
    opt = train.parse_opt(["--weights", str(w)])
    out = capsys.readouterr().out
    r = recipe()
    if why is None:  # an unpruned checkpoint keeps YOLOv5's defaults, silently
        assert (opt.hyp, opt.nbs) != (r["hyp"], r["nbs"]) and LINE not in out
    else:
        assert (opt.hyp, opt.nbs) == (r["hyp"], r["nbs"])
        line = next(ln for ln in out.splitlines() if LINE in ln)
        assert why in line and f"--hyp {r['hyp']}" in line and f"--nbs {r['nbs']}" in line


def test_explicit_flags_win_over_recipe(tmp_path, capsys):
    import train
    from engine.recipe import recipe

    w = _tiny(tmp_path, True, True)
    opt = train.parse_opt(["--weights", str(w), "--hyp", "scratch-low"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if LINE in ln)
    assert opt.hyp == "scratch-low" and opt.nbs == recipe()["nbs"] and "--hyp as given" in line
    opt = train.parse_opt(["--weights", str(w), "--hyp", "scratch-low", "--nbs", "64", "--schedule", "epochs"])
    assert (opt.hyp, opt.nbs, opt.schedule) == ("scratch-low", 64, "epochs")
    assert "nothing changed" in capsys.readouterr().out


def test_train_cli_pruned_runs_with_recipe(tmp_path, shapes_yaml, capsys):
    """End to end: the run folder's hyp.yaml / opt.yaml are the recipe's (no warmup, nbs 16)."""
    import train
    from engine.trainer import load_hyp

    w = _tiny(tmp_path, True, True)
    rc = train.main(["--weights", str(w), "--data", str(shapes_yaml), "--epochs", "1", "--img", "64", "--batch", "8",
                     "--workers", "0", "--project", str(tmp_path / "runs")])
    assert rc == 0 and LINE in capsys.readouterr().out
    run = tmp_path / "runs" / "exp"
    hyp = yaml.safe_load((run / "hyp.yaml").read_text())
    opt = yaml.safe_load((run / "opt.yaml").read_text())
    from engine.recipe import recipe

    assert hyp == load_hyp(recipe()["hyp"]) and hyp["warmup_epochs"] == 0 and opt["nbs"] == recipe()["nbs"]


def test_compress_finetune_defaults_follow_recipe():
    """compress.py's fine-tuning (cfg/default.yaml compress: block) uses the same recipe as train.py."""
    import compress
    from engine.recipe import recipe

    opt = compress.parse_opt(["--weights", "w.pt"])
    assert {k: getattr(opt, k) for k in recipe()} == recipe()
