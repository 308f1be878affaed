# AGPL-3.0 License
"""Validate a detector (YOLOv5, YOLOv7, ultralytics; full or pruned) on a dataset.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights runs/compress/exp/weights/best.pt --data shapes --img 320 --verbose
    python val.py --weights yolov5n.pt --data coco128.yaml --modification prune-structured \
        --pruning-params "[(12, 0.25), (45, 0.75)]" --criterion 0          # seed 002: the model pruned that way
    python val.py --task speed --weights runs/compress/exp/pruned.pt --img 640      # latency, no dataset
    python val.py --task sensitivity --weights yolov5n.pt --data coco128.yaml        # seed 002's analysis

Without --data, the built-in shapes dataset (generated offline on first use) is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal, get_args

import utils  # noqa: F401  (offline settings for ultralytics, before anything imports it)
from data.datasets import DataConfigError, build_val_loader, check_dataset, is_coco_named
from data.tasks import for_task
from engine.backends import ExportedModel, is_exported, load_exported
from engine.latency import run_speed
from engine.sensitivity import (
    TASK_ALIASES,
    add_sensitivity_args,
    check_seed_flags,
    load_pruned_model,
    run_sensitivity,
    strip_sensitivity_args,
)
from engine.validation import (
    CONVENTIONS,
    DEFAULT_BATCH,
    ValSettings,
    annotation_json,
    coco_evaluate,
    format_table,
    select_head,
    validate,
    validation_convention,
    write_json,
)
from engine.validation.plots import ValPlots
from models.loader import fuse_model, load_model, model_task
from utils.checkpoint import CheckpointError
from utils.config import HelpFormatter, defaults, explicit_flags
from utils.flops import model_summary
from utils.general import (
    LOGGER,
    UsageError,
    check_imgsz,
    increment_path,
    interrupt_status,
    select_device,
    sigterm_as_interrupt,
)

Task = Literal["train", "val", "test", "sensitivity", "speed"]
TASKS: tuple[str, ...] = get_args(Task)


def parse_opt(argv=None) -> argparse.Namespace:
    d = defaults()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                epilog="Defaults come from cfg/default.yaml.")
    g_data = p.add_argument_group("data and model")
    g_data.add_argument("--weights", nargs="+", type=str, required=True,
                        help="checkpoint (.pt), model yaml, or an exported model (.onnx, *_openvino_model/, "
                             ".torchscript, .engine)")
    g_data.add_argument("--data", type=str, default=d["data"], help="dataset yaml, or 'shapes' (the built-in synthetic set)")
    g_data.add_argument("--imgsz", "--img", "--img-size", type=int, default=d["imgsz"], help="inference size (pixels)")
    g_data.add_argument("--batch-size", "--batch", type=int, default=d["batch_size"],
                        help="batch size (default: the family's own, YOLOv5/YOLOv7 32, ultralytics 16)")
    g_data.add_argument("--task", default=d["task"], choices=(*TASKS, *TASK_ALIASES),
                        help="dataset split to evaluate; sensitivity (per-layer pruning analysis, seed 002; alias "
                             "pruning_sensitivity_analysis); "
                             "speed (latency: PyTorch and onnxruntime, batch 1 and --batch-size, no dataset)")
    g_data.add_argument("--device", default=d["device"], help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    g_data.add_argument("--workers", type=int, default=d["workers"], help="max dataloader workers")
    g_data.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    g_data.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    g_data.add_argument("--trust-checkpoint", action="store_true", help="unpickle weights without the safety allowlist")
    g_val = p.add_argument_group("validation (YOLOv5 val.py's flags)")
    g_val.add_argument("--conf-thres", type=float, default=d["conf_thres"], help="confidence threshold")
    g_val.add_argument("--iou-thres", type=float, default=d["iou_thres"],
                       help="NMS IoU threshold (default: the family's own, YOLOv5/YOLOv7 0.6, ultralytics 0.7)")
    g_val.add_argument("--max-det", type=int, default=d["max_det"], help="maximum detections per image")
    g_val.add_argument("--end2end", action="store_true",
                       help="end-to-end heads (YOLO26, YOLOv10): score the NMS-free one-to-one head without NMS, as "
                            "ultralytics' nms=False (default: the one-to-many head with NMS, as `yolo val`)")
    g_val.add_argument("--verbose", action="store_true", help="report mAP by class")
    g_out = p.add_argument_group("output")
    g_out.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    g_out.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    g_out.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file (and run pycocotools)")
    g_out.add_argument("--project", default=d["project"], help="save to project/name")
    g_out.add_argument("--name", default=d["name"], help="save to project/name")
    g_out.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    g_out.add_argument("--plots", action=argparse.BooleanOptionalAction, default=d["plots"],
                       help="PR, P, R, F1 curves and confusion matrices in the run folder")
    g_out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_sensitivity_args(p.add_argument_group("--task sensitivity (seed 002's per-layer analysis)"))
    opt = p.parse_args(argv)
    check_seed_flags(opt, explicit_flags(p, sys.argv[1:] if argv is None else argv))
    if opt.imgsz <= 0 or (opt.batch_size is not None and opt.batch_size <= 0):
        raise UsageError("--imgsz and --batch-size must be positive")
    if not 0 <= opt.conf_thres <= 1 or not 0 <= (0.5 if opt.iou_thres is None else opt.iou_thres) <= 1:
        raise UsageError("--conf-thres and --iou-thres must be in [0, 1]")
    if opt.ignore and opt.task != "sensitivity":
        raise UsageError("--ignore applies to --task sensitivity only (compress.py has its own --ignore)")
    given = explicit_flags(p, sys.argv[1:] if argv is None else argv)
    if opt.task != "sensitivity" and "batch_size" not in given:
        opt.batch_size = None  # speed: batch 1 and cfg's speed_batch; val: the family's own (rect batch shapes)
    if opt.task != "speed" and "data" not in given and opt.data == "shapes":
        LOGGER.info("no --data: validating on the built-in shapes dataset (4 synthetic classes, generated offline); "
                    "pass --data your.yaml for your own")
    return opt


def run(
    weights,
    data="shapes",
    imgsz=640,
    batch_size=None,
    conf_thres=0.001,
    iou_thres=None,
    max_det=300,
    task="val",
    device="",
    workers=8,
    single_cls=False,
    verbose=False,
    save_txt=False,
    save_conf=False,
    save_json=False,
    project="runs/val",
    name="exp",
    exist_ok=False,
    half=False,
    trust_checkpoint=False,
    no_progress=False,
    end2end=False,
    plots=True,
    model=None,
):
    """Validate one model; returns (ValResult, save_dir). `model` skips loading (used by train/compress)."""
    device = select_device(device)
    model, data_dict = _load(weights, data, task, single_cls, end2end, trust_checkpoint, model, device)
    model.to(device)
    stride = int(max(model.stride.max(), 32))
    rect = True
    if isinstance(model, ExportedModel):
        imgsz, rect, half = exported_shape(model, imgsz), model.dynamic, False  # precision: the file's
        n_params, n_gflops = model.meta.get("params"), model.meta.get("gflops")
        LOGGER.info(f"{model.file} ({model.format} {model.precision.upper()}, exported at {model.imgsz[0]}x"
                    f"{model.imgsz[1]}, batch {model.batch}{', dynamic' if model.dynamic else ''})")
    else:
        imgsz = check_imgsz(imgsz, stride)  # once the model's stride is known: one warning when it changes
        n_params, n_gflops, summary = model_summary(model, imgsz)
        LOGGER.info(summary)
    convention = validation_convention(model)
    LOGGER.info(f"Validation convention: {CONVENTIONS[convention]}")
    batch_size = batch_size or DEFAULT_BATCH[convention]

    loader = build_val_loader(data_dict, task, imgsz, batch_size, stride, workers, single_cls, rect=rect,
                              pad=0.5 if rect else 0.0, convention=convention)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)  # only once the inputs are usable
    settings = ValSettings(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
                           half=half, save_txt=save_txt, save_conf=save_conf, save_json=save_json,
                           coco_ids=save_json and is_coco_named(data_dict["names"]), progress=not no_progress)
    plotter = ValPlots(data_dict["names"] if not single_cls else {0: "item"}) if plots else None
    res, jdict = validate(model, loader, data_dict["names"], settings, device=device, save_dir=save_dir,
                          plotter=plotter)
    if plotter is not None:
        try:
            plotter.save(save_dir, {c["class"]: c["map50"] for c in res.per_class})
        except Exception as e:  # a figure must never cost the metrics (e.g. another ultralytics plotting API)
            LOGGER.warning(f"WARNING: plots not written ({type(e).__name__}: {e}); metrics follow")
    LOGGER.info(format_table(res, verbose or data_dict["nc"] < 50 and verbose))
    for note in res.notes:
        LOGGER.warning(f"WARNING: {note}")
    s = res.speed_ms
    LOGGER.info(
        f"Speed: {s['preprocess']:.1f}ms pre-process, {s['inference']:.1f}ms inference, {s['nms']:.1f}ms NMS "
        f"per image at shape ({batch_size}, 3, {imgsz}, {imgsz})"
    )
    if save_json and jdict:
        res.coco = _coco(jdict, weights, data_dict, task, save_dir)
    metrics = {
        "precision": res.precision,
        "recall": res.recall,
        "map50": res.map50,
        "map50_95": res.map50_95,
        "fitness": res.fitness,
        "params": n_params,
        "gflops": n_gflops,
        "images": res.images,
        "instances": res.instances,
        "speed_ms": res.speed_ms,
        "imgsz": imgsz,
        "weights": str(weights),
        "data": data_dict["yaml_file"],
        "per_class": res.per_class,
        "convention": res.convention,
        "iou_thres": settings.iou(convention),
        "notes": res.notes,
        **res.coco,
        **res.tasks,  # a segmentation model's mask metrics: "mask": {precision, recall, map50, map50_95, per_class}
    }
    write_json(metrics, save_dir / "metrics.json")
    LOGGER.info(f"Results saved to {save_dir}")
    return res, save_dir


def _load(weights, data, task: str, single_cls: bool, end2end: bool, trust: bool, model=None, device="cpu") -> tuple:
    """(fused model with its inference head chosen, data dict); a bad weights file is reported before the data
    is looked at. Raises UsageError when the model's classes do not match the data's."""
    from_yaml = Path(str(weights)).suffix in (".yaml", ".yml")
    if model is None and is_exported(weights):
        model = load_exported(weights, device)
    elif model is None and not from_yaml:
        model = load_model(weights, trust=trust)
    data_dict = check_dataset(data, splits=(task,))
    if model is None:  # a yaml builds an untrained model with the dataset's classes
        model = load_model(weights, nc=data_dict["nc"])
    data_dict = for_task(data_dict, model_task(model))  # the loader reads the task's labels (masks, ...)
    select_head(model, end2end)  # before fusing, which drops the unused head
    model = fuse_model(model)
    if model.nc != data_dict["nc"] and not single_cls:
        raise UsageError(
            f"{weights} predicts {model.nc} classes but {data_dict['yaml_file']} has {data_dict['nc']}: "
            "pass the matching --data (or --single-cls)"
        )
    return model, data_dict


def exported_shape(model: ExportedModel, imgsz: int) -> int:
    """The image size to validate an exported model at: its own for a fixed-shape export (letterboxed square
    batches, as YOLOv5's val.py feeds non-PyTorch backends), --imgsz for a dynamic one."""
    h, w = model.imgsz
    if model.dynamic:
        return check_imgsz(imgsz, int(model.stride.max()))
    if h != w:
        raise UsageError(f"{model.file}: exported at {h}x{w}; val.py letterboxes to squares: export with one "
                         "--imgsz, or with --dynamic")
    if imgsz != h:
        LOGGER.info(f"{model.file} takes {h}x{w} images: validating at {h} (not --imgsz {imgsz})")
    return h


def _coco(jdict: list[dict], weights, data_dict: dict, task: str, save_dir: Path) -> dict:
    """--save-json: the predictions file, and pycocotools' figures when the split has a COCO annotation file."""
    stem = Path(weights if isinstance(weights, (str, Path)) else weights[0]).stem
    pred_json = write_json(jdict, save_dir / f"{stem}_predictions.json")
    LOGGER.info(f"Saved {len(jdict)} predictions to {pred_json}")
    anno_json = annotation_json(data_dict, task)
    if anno_json is None:
        LOGGER.info("No COCO annotation json found (set 'annotations:' in the data yaml); skipping pycocotools")
        return {}
    return coco_evaluate(pred_json, anno_json, sorted({d["image_id"] for d in jdict}))


def _pruned(opt, weights):
    """Seed 002's "testing with the pruning parameters": the model pruned by --pruning-params (else None)."""
    if opt.pruning_params is None:
        return None
    nc = check_dataset(opt.data, splits=(opt.task,))["nc"] if Path(weights).suffix in (".yaml", ".yml") else None
    return load_pruned_model(weights, opt.pruning_params, opt.criterion, opt.imgsz, nc=nc,
                             trust=opt.trust_checkpoint, fuse=True)[0]


def main(argv=None) -> int:
    opt = None
    try:
        with sigterm_as_interrupt():
            opt = parse_opt(argv)
            if opt.task in ("sensitivity", "speed") and any(is_exported(w) for w in opt.weights):
                raise UsageError(f"--task {opt.task} needs the PyTorch checkpoint (.pt); time exported files with "
                                 "python bench/latency.py --models <file> ...")
            if opt.task == "sensitivity":
                for w in opt.weights:
                    run_sensitivity(opt, w)
                return 0
            if opt.task == "speed":
                for w in opt.weights:
                    run_speed(w, opt.imgsz, opt.batch_size, opt.device, opt.half, opt.project, opt.name,
                              opt.exist_ok, opt.trust_checkpoint)
                return 0
            for w in opt.weights:  # several --weights are validated one after another, each in its own run folder
                run(**{**strip_sensitivity_args(vars(opt)), "weights": w, "model": _pruned(opt, w)})
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, status = interrupt_status(e)
        how = ("the analysis keeps every finished layer: continue with the same command and --resume"
               if opt is not None and opt.task == "sensitivity" else
               "validation writes its results at the end, so nothing was saved; run the command again")
        print(f"{what}: {how}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
