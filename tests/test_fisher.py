# AGPL-3.0 License
"""Group Fisher policy in a toy training loop: Fisher accumulates at the masks, the weakest channel is
masked every `interval` steps until the FLOPs target, and the result materializes exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from models.loader import load_model
from prune import apply_removal, build_groups
from prune.methods.fisher import GroupFisher


def _loop(model, gf, make_x, loss_fn, max_steps=400):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    for _ in range(max_steps):
        x = make_x()
        gf.before_forward(x.shape[0])
        loss = loss_fn(model(x))
        opt.zero_grad()
        loss.backward()
        gf.after_backward()
        opt.step()
        if gf.done:
            break


@pytest.mark.parametrize("norm", ["flops", "act"])
def test_group_fisher_reaches_target_on_yolo(norm):
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=2).train()
    groups = build_groups(model)
    gf = GroupFisher(model, groups, target_flops=0.95, norm=norm, interval=2, channels_per_step=16).attach()
    _loop(model, gf, lambda: torch.rand(2, 3, 32, 32), lambda out: sum(o.float().square().mean() for o in out))
    assert gf.done and gf.flops_share <= 0.95
    assert gf.history and all(step % 2 == 0 for step, *_ in gf.history)
    removed = gf.removed()
    for g in groups.prunable:
        assert len(g) - len(removed.get(g.id, [])) >= 1
    # masked == materialized, in eval
    gf.detach()
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        gf.masks.attach()
        masked = model(x)[0]
        gf.masks.detach()
        cut = apply_removal(copy.deepcopy(model), groups, removed)(x)[0]
    assert (masked - cut).abs().max() <= 1e-4 * masked.abs().max()


def test_group_fisher_on_a_classifier():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).train()
    groups = build_groups(model, imgsz=32)
    gf = GroupFisher(model, groups, target_flops=0.95, interval=1, channels_per_step=16).attach()
    y = torch.randint(0, 5, (4,))
    _loop(model, gf, lambda: torch.rand(4, 3, 32, 32), lambda out: torch.nn.functional.cross_entropy(out, y))
    assert gf.done


def test_fisher_is_the_squared_mask_gradient():
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml", nc=2).train()
    groups = build_groups(model)
    gf = GroupFisher(model, groups, target_flops=0.5, interval=1000).attach()
    x = torch.rand(3, 3, 32, 32)
    gf.before_forward(3)
    ps = gf.masks.per_sample
    sum(o.float().square().mean() for o in model(x)).backward()
    expected = ps.grad.double().pow(2).sum(0)
    gf.after_backward()
    assert torch.allclose(gf.fisher, expected) and gf.fisher[gf.prunable].gt(0).any()


def test_bad_arguments():
    model = load_model("yolov5n.yaml", nc=2)
    groups = build_groups(model)
    with pytest.raises(ValueError, match="--fisher-norm"):
        GroupFisher(model, groups, norm="params")
    with pytest.raises(ValueError, match="--target-flops"):
        GroupFisher(model, groups, target_flops=1.5)


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov8n.yaml"])
def test_compress_method_fisher_cli(cfg, shapes_yaml, tmp_path):
    """compress.py --method fisher: prune during training to the FLOPs target, then fine-tune the cut model."""
    import json

    import compress

    rc = compress.main(["--weights", cfg, "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--workers", "0",
                        "--method", "fisher", "--target-flops", "0.9", "--interval", "1", "--channels-per-step", "40",
                        "--epochs", "1", "--no-latency", "--hyp", "scratch-low", "--project", str(tmp_path)])
    assert rc == 0
    run = tmp_path / "exp"
    s = json.loads((run / "summary.json").read_text())
    f = json.loads((run / "round_0" / "fisher.json").read_text())
    assert f["flops_share"] <= 0.9 and len(f["history"]) >= 40
    # the pruning phase's training, in epochs (a method comparison counts it in the training budget)
    assert f["steps"] >= 1 and f["epochs"] > 0 and f["epochs"] == pytest.approx(f["steps"] / round(f["steps"] / f["epochs"]))
    assert s["after"]["params"] < s["before"]["params"] and s["rounds"][0]["model"] == "weights/best.pt"
