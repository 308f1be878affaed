# AGPL-3.0 License
"""Calibration oracle: a fixed seeded subset, loaded once, losses per task, image-forward accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.datasets import check_dataset
from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches
from models.loader import load_model
from prune import ChannelMasks, build_groups


def _criterion(raw, batch):
    """Stand-in per-task loss: energy of the box / objectness / class parts of the raw head maps."""
    parts = [slice(0, 4), slice(4, 5), slice(5, None)]
    items = torch.stack([sum(r[..., s].float().square().mean() for r in raw) for s in parts])
    return items.sum() * len(batch["img"]), items


def test_oracle_subset_is_seeded_and_cached(shapes_yaml):
    data = check_dataset(str(shapes_yaml), splits=("train",))
    a = calibration_batches(data, 64, 6, 4, seed=1)
    b = calibration_batches(data, 64, 6, 4, seed=1)
    c = calibration_batches(data, 64, 6, 4, seed=2)
    files = lambda bs: [f for x in bs for f in x["im_file"]]  # noqa: E731
    assert len(files(a)) == 6 and files(a) == files(b) and files(a) != files(c)
    assert all(x["img"].shape[-2:] == (64, 64) for x in a)


def test_oracle_sees_masks(shapes_yaml):
    data = check_dataset(str(shapes_yaml), splits=("train",))
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=4)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    oracle = CalibrationOracle(model, calibration_batches(data, 64, 4, 4, seed=0), _criterion, ["box", "obj", "cls"])
    base = oracle()
    groups = build_groups(model)
    with ChannelMasks(model, groups) as masks:
        for g in groups.prunable:
            masks.set_removed(g.id, list(range(len(g) // 2)))
        pruned = oracle()
    assert base.shape == (3,) and not np.allclose(base, pruned)
    assert oracle.calls == 2 and oracle.image_forwards == 8


def test_bn_recalibration_and_batch_mode_oracle(shapes_yaml):
    """recalibrate_bn re-estimates running stats without touching weights; the 'batch' oracle leaves them intact."""
    import torch

    from data.datasets import check_dataset
    from models.loss import build_criterion
    from prune.methods.pagcp.oracle import CalibrationOracle, calibration_batches, recalibrate_bn
    from models.loader import load_model

    model = load_model("yolov5n.yaml", nc=4).eval()
    data = check_dataset(str(shapes_yaml), splits=("train", "val"))
    batches = calibration_batches(data, 64, 8, 4, seed=0)
    bn = model.model[0].bn
    w = bn.weight.clone()
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    crit = build_criterion(model, None, 64)
    o = CalibrationOracle(model, batches, crit, list(crit.names), bn="batch")
    o()
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) and not model.training
    assert recalibrate_bn(model, batches) > 0
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) and torch.equal(bn.weight, w)
    assert bn.momentum == 0.03  # restored (YOLOv5 sets 0.03)


def test_bn_recalibration_is_kept_only_when_the_loss_falls(shapes_yaml):
    """Statistics re-estimated on dark images make the loss on real ones worse: they are discarded and the
    original statistics restored exactly; re-estimating a model whose statistics are wrong is kept."""
    from models.loss import build_criterion
    from prune.methods.pagcp.oracle import recalibrate_bn_if_better

    data = check_dataset(str(shapes_yaml), splits=("train",))
    real = calibration_batches(data, 64, 8, 4, seed=0)
    check = calibration_batches(data, 64, 8, 4, seed=1)
    model = load_model("yolov5n.yaml", nc=4).eval()
    from prune.methods.pagcp.oracle import recalibrate_bn

    recalibrate_bn(model, real)  # a model with sensible statistics
    model.eval()
    crit = build_criterion(model, None, 64)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    dark = [{**b, "img": (b["img"].float() * 0.05).to(b["img"].dtype)} for b in real]
    kept, before, after = recalibrate_bn_if_better(model, dark, check, crit)
    assert not kept and not after < before, (before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())

    recalibrate_bn(model, dark)  # now the statistics do not match real images
    model.eval()
    kept, before, after = recalibrate_bn_if_better(model, real, check, crit)
    assert kept and not before < after, (before, after)  # the dark statistics may not even give a finite loss


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov8n.yaml", "yolov7-tiny.yaml"])
def test_prefix_cache_gives_the_losses_of_full_forwards(shapes_yaml, cfg):
    """Forwards that start at the focused unit's first layer (earlier outputs reused) give exactly the full
    forward's losses, also when a mask before that layer changes meanwhile (the cache is rebuilt), and cost less."""
    from models.loss import build_criterion

    data = check_dataset(str(shapes_yaml), splits=("train",))
    torch.manual_seed(0)
    model = load_model(cfg, nc=4).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    batches = calibration_batches(data, 64, 6, 3, seed=0)
    crit = build_criterion(model, None, 64)
    groups = build_groups(model, imgsz=64)
    full = CalibrationOracle(model, batches, crit, list(crit.names))
    cached = CalibrationOracle(model, batches, crit, list(crit.names), prefix_cache=True)
    masks = ChannelMasks(model, groups)
    starts = {g.id: masks.first_layer(g.id) for g in groups.prunable}
    deep = max(groups.prunable, key=lambda g: starts[g.id] or 0)
    early = min(groups.prunable, key=lambda g: starts[g.id] if starts[g.id] is not None else 1e9)
    assert starts[deep.id] > starts[early.id] >= 0, starts
    too_big = CalibrationOracle(model, batches, crit, list(crit.names), prefix_cache=True)
    too_big.cache_bytes = 0  # nothing may be kept: plain forwards
    with masks:
        for unit in (deep, early, deep):
            cached.focus(masks, unit.id)
            too_big.focus(masks, unit.id)
            for n in (1, len(unit) // 2, len(unit) - 1):
                masks.set_removed(unit.id, list(range(n)))
                want = full()
                np.testing.assert_array_equal(cached(), want)
                np.testing.assert_array_equal(too_big(), want)
            masks.set_removed(early.id, [0, 1])  # a mask before the deep unit's layers changes: no stale outputs
            np.testing.assert_array_equal(cached(), full())
        cached.focus(masks, None)
        np.testing.assert_array_equal(cached(), full())
    assert too_big.flop_forwards == too_big.image_forwards
    assert cached.calls == full.calls and cached.image_forwards == full.image_forwards
    assert full.flop_forwards == full.image_forwards and cached.flop_forwards < 0.9 * cached.image_forwards


def test_pagcp_with_prefix_cache_makes_the_same_decisions(shapes_yaml):
    from models.loss import build_criterion
    from prune.methods.pagcp.reference import PAGCP, PAGCPConfig

    data = check_dataset(str(shapes_yaml), splits=("train",))
    torch.manual_seed(1)
    model = load_model("yolov5n.yaml", nc=4).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.2, 1.5)
    batches = calibration_batches(data, 64, 4, 4, seed=0)
    crit = build_criterion(model, None, 64)
    groups = build_groups(model, imgsz=64)
    runs = []
    for cache in (False, True):
        oracle = CalibrationOracle(model, batches, crit, list(crit.names), prefix_cache=cache)
        cfg = PAGCPConfig(initial_rate=0.02, initial_thres=1.5, exp=True, step=0.1)
        removed, decisions = PAGCP(model, groups, oracle, list(crit.names), cfg, progress=False).run()
        runs.append((removed, [(d.group, d.ratio, d.trials) for d in decisions], oracle))
    assert runs[0][:2] == runs[1][:2] and runs[0][0]  # same cuts, same trials; something was pruned
    assert runs[1][2].flop_forwards < runs[0][2].flop_forwards == runs[0][2].image_forwards


def test_mask_fisher_saliency(shapes_yaml):
    """The oracle's mask Fisher (PAGCP --prunemethod fisher): one score per mask class; a dead channel and a masked
    one score exactly 0, live ones more; model gradients and the loss oracle's values are untouched; PAGCP ranks
    a unit's channels by it and refuses it with an oracle that has no gradients."""
    from models.loss import build_criterion
    from prune.methods.pagcp.reference import PAGCP, PAGCPConfig

    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=4).eval()
    data = check_dataset(str(shapes_yaml), splits=("train",))
    crit = build_criterion(model, None, 64)
    oracle = CalibrationOracle(model, calibration_batches(data, 64, 4, 2, seed=0), crit, list(crit.names), bn="batch")
    groups = build_groups(model)
    g = next(x for x in groups.prunable if "model.0.conv" in x.producers)
    dead = 3
    model.model[0].bn.weight.data[dead] = 0.0  # constant 0 output: SiLU(0) = 0, nothing flows through it
    model.model[0].bn.bias.data[dead] = 0.0
    before = oracle()
    with ChannelMasks(model, groups) as masks:
        masks.set_removed(g.id, [5])
        f = oracle.mask_fisher(masks)
        assert f.shape == (len(masks.values),) and np.isfinite(f).all()
        mine = f[[masks.index[r] for r in g.classes]]
        assert mine[dead] == 0 and mine[5] == 0 and (np.delete(mine, [dead, 5]) > 0).all()
        pol = PAGCP(model, groups, oracle, list(crit.names), PAGCPConfig(criterion="fisher"), progress=False)
        pol.masks = masks
        assert np.array_equal(pol.saliency(g), mine)
        masks.set_removed(g.id, [])
    assert all(p.grad is None for p in model.parameters())
    assert np.array_equal(oracle(), before)
    with pytest.raises(ValueError, match="needs an oracle with gradients"):
        PAGCP(model, groups, lambda: np.ones(3), list(crit.names), PAGCPConfig(criterion="fisher"))
