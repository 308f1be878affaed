# AGPL-3.0 License
"""Detection losses: YOLOv5's anchor loss and ultralytics' loss behind one API."""

from __future__ import annotations

import pytest
import torch

from data.datasets import build_val_loader, check_dataset
from models.loss import AnchorLoss, build_criterion, scaled_gains
from models.loader import load_model


def test_gains_rescaled_once():
    h = scaled_gains({"box": 0.05, "obj": 1.0, "cls": 0.5}, nl=3, nc=80, imgsz=320)
    assert h["box"] == pytest.approx(0.05) and h["cls"] == pytest.approx(0.5) and h["obj"] == pytest.approx(0.25)
    h = scaled_gains({"box": 0.05, "obj": 1.0, "cls": 0.5}, nl=3, nc=4, imgsz=640)
    assert h["cls"] == pytest.approx(0.5 * 4 / 80)


@pytest.fixture(scope="module")
def batch(shapes_yaml):
    data = check_dataset(str(shapes_yaml))
    return next(iter(build_val_loader(data, "val", 64, 4, 32, workers=0, rect=False)))


@pytest.mark.parametrize("cfg, names", [("yolov5n.yaml", ("box", "obj", "cls")), ("yolov7-tiny.yaml", ("box", "obj", "cls")),
                                        ("yolov8n.yaml", ("box", "cls", "dfl"))])
def test_loss_is_finite_positive_and_differentiable(cfg, names, batch):
    model = load_model(cfg, nc=4).train()
    crit = build_criterion(model, None, 64)
    assert crit.names == names
    loss, items = crit(model(batch["img"].float() / 255), batch)
    assert torch.isfinite(loss) and loss > 0 and items.shape == (3,) and (items >= 0).all()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_single_class_has_no_class_loss(batch):
    model = load_model("yolov5n.yaml", nc=1).train()
    b = {**batch, "cls": torch.zeros_like(batch["cls"])}
    _, items = AnchorLoss(model, None, 64)(model(b["img"].float() / 255), b)
    assert items[2] == 0 and items[0] > 0 and items[1] > 0


def test_targets_use_neighbouring_cells(batch):
    model = load_model("yolov5n.yaml", nc=4).train()
    crit = AnchorLoss(model, None, 64)
    preds = model(batch["img"].float() / 255)
    t = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
    _, _, indices, _ = crit.build_targets(preds, t)
    matched = sum(len(i[0]) for i in indices)
    assert matched >= len(t)  # each target lands in several (cell, anchor, level) slots
