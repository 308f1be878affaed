# AGPL-3.0 License
"""pycocotools evaluation of a COCO-json predictions file (val.py --save-json)."""

from __future__ import annotations

from pathlib import Path


def coco_evaluate(pred_json: Path, anno_json: Path, image_ids: list) -> dict:
    """Score `pred_json` against `anno_json` with pycocotools (prints its summary).

    Args:
        pred_json: COCO-json prediction rows (engine.validation.validate with save_json).
        anno_json: COCO instances annotation file; image_ids: the images to score.
    Returns:
        {'coco_map50_95', 'coco_map50'}.
    """
    from pycocotools.coco import COCO  # optional dependency, only needed with --save-json
    from pycocotools.cocoeval import COCOeval

    anno = COCO(str(anno_json))
    pred = anno.loadRes(str(pred_json))
    ev = COCOeval(anno, pred, "bbox")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"coco_map50_95": float(ev.stats[0]), "coco_map50": float(ev.stats[1])}


def annotation_json(data: dict, split: str) -> Path | None:
    """The COCO annotation file of a dataset split: the data yaml's `annotations:`, else
    <path>/annotations/instances_<split stem>.json; None when it does not exist."""
    root = Path(data["path"])
    if data.get("annotations"):
        p = Path(data["annotations"])
        p = p if p.is_absolute() else root / p
        return p if p.exists() else None
    stem = Path(data[split][0]).stem  # val2017.txt or images/val2017 -> val2017
    p = root / "annotations" / f"instances_{stem}.json"
    return p if p.exists() else None
