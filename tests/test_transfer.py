# AGPL-3.0 License
"""Transfer to a new class set: a reset head starts as a fresh model of that nc would, keeps every learned row,
and a 1-class transfer detects after a few steps (YOLOv5, YOLOv7-tiny, ultralytics YOLOv8n)."""

from __future__ import annotations

import math

import pytest
import torch

IMGSZ = 64


def _tiny_set(n: int, seed: int = 0):
    """n 64x64 images, each one filled square (20-30 px) of one of 4 colours on grey noise.

    Returns images (n, 3, 64, 64) in [0, 1] and a YOLO batch dict (batch_idx, cls = colour index, bboxes xywh
    in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])
    imgs = 0.45 + 0.1 * torch.rand(n, 3, IMGSZ, IMGSZ, generator=g)
    boxes, cls = [], []
    for i in range(n):
        s = int(torch.randint(20, 31, (1,), generator=g))
        x0, y0 = (int(v) for v in torch.randint(0, IMGSZ - s, (2,), generator=g))
        imgs[i, :, y0:y0 + s, x0:x0 + s] = colours[i % 4].view(3, 1, 1)
        boxes.append([(x0 + s / 2) / IMGSZ, (y0 + s / 2) / IMGSZ, s / IMGSZ, s / IMGSZ])
        cls.append(i % 4)
    batch = {"batch_idx": torch.arange(n).float(), "cls": torch.tensor(cls).float().view(-1, 1),
             "bboxes": torch.tensor(boxes)}
    return imgs, batch


def _fit(model, imgs, batch, steps: int, lr: float):
    """`steps` Adam steps of the family's own loss on one fixed batch."""
    from models.loss import build_criterion

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    criterion = build_criterion(model, {"box": 0.05, "obj": 1.0, "cls": 0.5}, IMGSZ)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = criterion(model(imgs), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def _scores_on_objects(model, imgs, batch) -> torch.Tensor:
    """Per image, the highest detection score among predictions overlapping its object (IoU >= 0.5).

    Score = objectness x class probability (anchor-based heads) or the class probability (ultralytics heads)."""
    from ultralytics.utils.metrics import box_iou
    from ultralytics.utils.ops import xywh2xyxy

    from models.loader import is_anchor_based

    model.eval()
    y = model(imgs)
    y = y[0] if isinstance(y, (list, tuple)) else y
    if is_anchor_based(model):
        score, boxes = (y[..., 4:5] * y[..., 5:]).amax(-1), y[..., :4]
    else:
        score, boxes = y[:, 4:, :].amax(1), y[:, :4, :].transpose(1, 2)
    gt = xywh2xyxy(batch["bboxes"] * IMGSZ)
    return torch.stack([(score[i] * (box_iou(xywh2xyxy(boxes[i]), gt[i:i + 1])[:, 0] >= 0.5)).max()
                        for i in range(len(imgs))])


@pytest.mark.parametrize("cfg, n_images", [("yolov5n.yaml", 4), ("yolov7-tiny.yaml", 4), ("yolov8n.yaml", 8)])
def test_one_class_transfer_detects(cfg, n_images):
    """4-class model trained 60 steps on tiny images, head reset to 1 class, 10 steps on the same images: the
    median image's best score on its object is > 0.25. (With the former reset, which left anchor-based class
    logits at -4.6 while the YOLOv5 loss has no class term at nc = 1, these medians were 0.011 for YOLOv5n and
    0.031 for YOLOv7-tiny.)"""
    from models.loader import load_model, reset_classes

    torch.manual_seed(0)
    imgs, batch = _tiny_set(n_images)
    model = load_model(cfg, nc=4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1  # running statistics must catch up within 60 steps for the eval-mode check
    _fit(model, imgs, batch, 60, lr=1e-3)
    reset_classes(model, 1)
    assert model.nc == 1
    one = {**batch, "cls": torch.zeros_like(batch["cls"])}
    scores = _scores_on_objects(_fit(model, imgs, one, 10, lr=5e-4), imgs, one)
    assert scores.median() > 0.25, f"{cfg}: scores on the objects after the 1-class transfer {scores.tolist()}"


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov7-tiny.yaml"])
def test_anchor_head_reset_keeps_rows_and_fresh_prior(cfg):
    from models.loader import detection_head, load_model, reset_classes

    torch.manual_seed(0)
    model = load_model(cfg, nc=80)
    head = detection_head(model)
    with torch.no_grad():  # make the learned rows recognisable
        for i in range(head.nl):
            head.m[i].bias.add_(torch.randn_like(head.m[i].bias))
            if hasattr(head, "im"):
                head.im[i].implicit.mul_(1.5)
    old = [(c.weight.view(head.na, 85, -1).clone(), c.bias.view(head.na, 85).clone()) for c in head.m]
    old_im = [m.implicit.view(head.na, 85).clone() for m in getattr(head, "im", [])]
    old_ia = [m.implicit.clone() for m in getattr(head, "ia", [])]
    reset_classes(model, 1)
    assert head.nc == 1 and head.no == 6 and model.yaml["nc"] == 1
    prior = math.log(0.6 / (1 - 0.99999))  # YOLOv5 Model._initialize_biases' class prior for nc = 1
    for i, c in enumerate(head.m):
        w, b = c.weight.view(head.na, 6, -1), c.bias.view(head.na, 6)
        assert torch.equal(w[:, :5], old[i][0][:, :5]) and torch.equal(b[:, :5], old[i][1][:, :5])
        bound = 1 / math.sqrt(c.in_channels)  # PyTorch's default conv bias init: U(-bound, bound)
        assert ((b[:, 5] - prior).abs() <= bound + 1e-5).all()
        assert w[:, 5].abs().max() <= bound + 1e-6  # default (kaiming-uniform, a=sqrt(5)) weight init
    for i, m in enumerate(getattr(head, "im", [])):
        v = m.implicit.view(head.na, 6)
        assert torch.equal(v[:, :5], old_im[i][:, :5])  # learned ImplicitM values kept
        assert ((v[:, 5] - 1).abs() < 0.2).all()  # new rows as ImplicitM draws them: N(1, 0.02)
    for i, m in enumerate(getattr(head, "ia", [])):
        assert torch.equal(m.implicit, old_ia[i])
    # reset to as many classes as a fresh model of that nc: the same output size, and it runs
    y = model.eval()(torch.zeros(1, 3, 64, 64))[0]
    assert y.shape[-1] == 6


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov10n.yaml"])
def test_ultralytics_head_reset_matches_fresh_bias_init(cfg):
    """New class convs get the head's own bias_init (as a fresh nc=1 model); box biases stay as trained."""
    from models.loader import detection_head, load_model, reset_classes

    model, fresh = load_model(cfg, nc=80), load_model(cfg, nc=1)
    head = detection_head(model)
    with torch.no_grad():
        for a in head.cv2:
            a[-1].bias.add_(0.5)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    reset_classes(model, 1)
    assert head.nc == 1 and head.no == 1 + 4 * head.reg_max and model.yaml["nc"] == 1
    for name in ("cv3", "one2one_cv3"):
        ours, ref = getattr(head, name, None), getattr(detection_head(fresh), name, None)
        assert (ours is None) == (ref is None)
        for a, b in zip(ours or [], ref or []):
            assert torch.equal(a[-1].bias, b[-1].bias) and a[-1].out_channels == 1
    after = head.state_dict()
    kept = [k for k in before if k in after and before[k].shape == after[k].shape]
    assert any(k.startswith("cv2.") for k in kept)
    for k in kept:
        assert torch.equal(before[k], after[k]), k
    model.eval()(torch.zeros(1, 3, 64, 64))


def test_reset_unknown_head_fails_closed():
    import torch.nn as nn

    from models.loader import reset_classes
    from utils.checkpoint import CheckpointError

    class Odd(nn.Module):
        nc = 3

    model = nn.Module()
    model.model = nn.Sequential(nn.Identity(), Odd())
    with pytest.raises(CheckpointError, match="cannot change the number of classes"):
        reset_classes(model, 1)


@pytest.mark.parametrize("cfg", ["yolov7-tiny.yaml", "yolov8n.yaml"])
def test_reset_keeps_rows_of_known_class_names(cfg):
    """Classes the model already knows by name keep their learned rows (as ultralytics remaps by name); others
    start fresh; an anchor-based 1-class head starts fresh even for a known name (no loss term trains it)."""
    from data.datasets import coco_names
    from models.loader import detection_head, is_anchor_based, load_model, reset_classes

    def class_rows(model):
        head = detection_head(model)
        if is_anchor_based(model):
            return [c.weight.view(head.na, head.no, -1)[:, 5:].transpose(0, 1) for c in head.m]  # (nc, na, cin)
        return [b[-1].weight[:, :, 0, 0] for b in head.cv3]  # (nc, cin)

    coco = coco_names()
    model = load_model(cfg, nc=80)
    model.names = dict(enumerate(coco))
    old = [w.clone() for w in class_rows(model)]
    reset_classes(model, 3, [" Dog", "person", "raccoon"])
    assert model.names == {0: " Dog", 1: "person", 2: "raccoon"}
    for w_new, w_old in zip(class_rows(model), old):
        assert torch.equal(w_new[0], w_old[coco.index("dog")]) and torch.equal(w_new[1], w_old[0])
        assert not any(torch.equal(w_new[2], r) for r in w_old)
    one = load_model(cfg, nc=80)
    one.names = dict(enumerate(coco))
    old = [w.clone() for w in class_rows(one)]
    reset_classes(one, 1, ["person"])
    kept = all(torch.equal(w_new[0], w_old[0]) for w_new, w_old in zip(class_rows(one), old))
    assert kept != is_anchor_based(one)
