# AGPL-3.0 License
"""Detection losses with one API for every family: `criterion(raw_preds, batch) -> (loss * bs, items)`.

`items` holds the per-task losses in `criterion.names` order — (box, obj, cls) for anchor-based heads,
(box, cls, dfl) for ultralytics detection heads, ultralytics' own terms for its other tasks (box, seg, cls, dfl for
segmentation) — which PAGCP's oracle compares task by task.

The anchor-based loss follows YOLOv5: CIoU box loss, objectness BCE with IoU targets, class BCE with
label smoothing, targets matched to anchors with width/height ratio < anchor_t and assigned to their
cell plus the two nearest neighbouring cells, level balance [4.0, 1.0, 0.4]. Hyp gains are rescaled
for the number of levels, classes and the image size exactly once, here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.loader import detection_head, is_anchor_based, model_task

HYP_DEFAULTS = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
                "label_smoothing": 0.0, "dfl": 1.5}
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def scaled_gains(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """YOLOv5's rescaling of the loss gains to layers, classes and image size (applied once)."""
    h = {**HYP_DEFAULTS, **(hyp or {})}
    h["box"] *= 3 / nl
    h["cls"] *= nc / 80 * 3 / nl
    h["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return h


class AnchorLoss:
    names = ("box", "obj", "cls")

    def __init__(self, model: nn.Module, hyp: dict | None = None, imgsz: int = 640):
        head = detection_head(model)
        self.na, self.nc, self.nl = head.na, head.nc, head.nl
        self.anchors = head.anchors.detach().clone()  # (nl, na, 2) in grid units
        self.h = scaled_gains(hyp, self.nl, self.nc, imgsz)
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        eps = self.h["label_smoothing"]
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps
        self._bce = {}

    def _bce_for(self, device):
        if device not in self._bce:
            self._bce[device] = (
                nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.h["cls_pw"]], device=device)),
                nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.h["obj_pw"]], device=device)),
            )
        return self._bce[device]

    def __call__(self, preds: list[torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from ultralytics.utils.metrics import bbox_iou

        device = preds[0].device
        bce_cls, bce_obj = self._bce_for(device)
        targets = torch.cat(
            (batch["batch_idx"].view(-1, 1).float(), batch["cls"].view(-1, 1).float(), batch["bboxes"].float()), 1
        ).to(device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)
        lbox, lobj, lcls = (torch.zeros(1, device=device) for _ in range(3))
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[range(n), tcls[i]] = self.cp
                    lcls += bce_cls(pcls, t)
            lobj += bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.h["box"], lobj * self.h["obj"], lcls * self.h["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds, targets):
        """Match each target to anchors (ratio test) on every level, in its cell and the 2 nearest cells."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        ai = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): img cls x y w h anchor
        g = 0.5
        off = _NEIGHBOURS.to(device) * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i].to(device), preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device)[[3, 2, 3, 2]].float()
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(r, 1 / r).max(2)[0] < self.h["anchor_t"]]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < g) & (gxy > 1)).T  # near the left / top edge of its cell
                right, down = ((gxi % 1 < g) & (gxi > 1)).T
                j = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t, offsets = targets[0], 0
            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            gj, gi = gj.clamp(0, shape[2] - 1), gi.clamp(0, shape[3] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


class UltralyticsLoss:
    """ultralytics' own loss of the model's task (v8DetectionLoss, v8SegmentationLoss, ..., E2ELoss) behind the same
    API. `names`: its terms as ultralytics names them, less '_loss'; the semantic-mask term of ultralytics'
    segmentation loss is left out for a head without a semantic branch (always zero there)."""

    names = ("box", "cls", "dfl")

    def __init__(self, model: nn.Module, hyp: dict | None = None, imgsz: int = 640):
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.utils import IterableSimpleNamespace

        args = getattr(model, "args", None)
        base = dict(args) if isinstance(args, dict) else vars(args) if args is not None else {}
        gains = {k: v for k, v in (hyp or {}).items() if k in ("box", "cls", "dfl")}
        model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **base, **gains})
        self.inner = model.init_criterion()
        inner = getattr(self.inner, "one2one", self.inner)  # E2ELoss: both branches have the same terms
        names = self.names if model_task(model) == "detect" else tuple(n.removesuffix("_loss") for n in inner.loss_names)
        semantic = hasattr(getattr(detection_head(model), "proto", None), "semseg")
        self.keep = [i for i, n in enumerate(names) if n != "sem" or semantic]
        self.names = tuple(names[i] for i in self.keep)

    def __call__(self, preds, batch):
        loss, items = self.inner(preds, batch)
        if isinstance(items, dict):
            items = torch.stack([v.reshape(()) for v in items.values()])
        if len(self.keep) != len(items):
            items = items[self.keep]
        return loss.sum(), items.detach()


def build_criterion(model: nn.Module, hyp: dict | None = None, imgsz: int = 640):
    """The detection loss of `model`'s family, with per-task items."""
    return AnchorLoss(model, hyp, imgsz) if is_anchor_based(model) else UltralyticsLoss(model, hyp, imgsz)
