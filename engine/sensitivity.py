# AGPL-3.0 License
"""`val.py --task sensitivity`: seed 002's per-layer sensitivity analysis from the command line.

    python val.py --task sensitivity --weights yolov5n.pt --data coco128.yaml --img 320 \
        --pruning-rate "[0.25,0.5,0.75]" --criterion 0
    python layer_selection.py --output runs/sensitivity/exp --params-layers 6 --flops-layers 5
    python compress.py --weights yolov5n.pt --data coco128.yaml --criterion 0 --pruning-params "[(3, 0.5), ...]"

Each prunable layer (engine group, ids as in `compress.py --show-groups` and the folder's layers.txt) is
masked alone at each rate and validated; prune.sensitivity.run_analysis writes output_{rate}.txt (one line
per layer, flushed; `--prune-output NAME.txt` renames them NAME_{rate}.txt), then sensitivity.csv,
sensitivity.png and meta.json. A rerun with --resume (or the same --name with --exist-ok) continues in the
same folder and skips the layers already written.

The seed's other test.py/train.py flags are accepted with their meaning (check_seed_flags): `--task
pruning_sensitivity_analysis` (= sensitivity), `--modification prune-structured|pruned-structured` (channel
pruning, the only kind here), and `--pruning-params P --criterion N` (val.py validates, train.py fine-tunes
the model pruned that way at load: load_pruned_model).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from ultralytics.utils import TQDM

import engine.validation as validation
from data.datasets import build_val_loader, check_dataset
from data.tasks import for_task
from models.loader import fuse_model, load_model, model_task
from prune import build_groups
from prune.importance import SEED_CRITERIA, get_criterion
from prune.sensitivity import (
    DEFAULT_STEM,
    done_layers,
    parse_pruning_params,
    parse_rates,
    prune_layers,
    run_analysis,
    show_layers,
)
from utils.config import defaults
from utils.files import write_json, write_text
from utils.flops import count_params, gflops
from utils.general import LOGGER, UsageError, check_imgsz, increment_path, select_device

# the settings a resumed analysis must share with the interrupted one (results would not be comparable)
_SAME = ("weights", "data", "imgsz", "criterion", "conf_thres", "iou_thres", "max_det", "single_cls", "stem")
# criteria that need no gradients (seed 002's 0-6)
_CRITERIA = ("l2", "l2_largest", "l1", "l1_largest", "bn", "bnl1", "random")
# seed 002's --modification values (both spellings appear in its README): structured channel pruning
MODIFICATIONS = ("prune-structured", "pruned-structured")
TASK_ALIASES = {"pruning_sensitivity_analysis": "sensitivity"}  # seed 002's test.py task name
PRUNING_ARGS = ("modification", "pruning_params", "criterion")  # add_pruning_args (train.py too)
_ARGS = ("pruning_rate", "layers", "resume", "prune_output", "ignore", *PRUNING_ARGS)  # add_sensitivity_args (val.py)


def add_sensitivity_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    d = defaults("sensitivity")
    p.add_argument("--pruning-rate", default=repr(d["pruning_rate"]),
                   help="--task sensitivity: rate or list of rates in (0, 1), e.g. \"[0.25,0.5,0.75]\"")
    p.add_argument("--criterion", default=str(d["criterion"]),
                   help="--task sensitivity and --pruning-params: seed 002's 0-6 (0 smallest L2 ... 6 random) or a "
                        "name (l2, bn, ...)")
    p.add_argument("--layers", default=d["layers"],
                   help="--task sensitivity: only these layer ids, e.g. \"[3,7,12]\" (default: every prunable layer)")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="--task sensitivity: continue the latest (or given) analysis folder, skipping done layers")
    p.add_argument("--ignore", nargs="*", default=[],
                   help="--task sensitivity: module-name patterns whose layers are not analysed (as compress.py's)")
    p.add_argument("--prune-output", default=d["prune_output"],
                   help="--task sensitivity: file name whose stem names the results (output.txt -> output_{rate}.txt)")
    add_pruning_args(p)


def add_pruning_args(p: argparse.ArgumentParser, criterion: bool = False) -> None:
    """Seed 002's --modification and --pruning-params (and --criterion where the parser has none yet)."""
    p.add_argument("--modification", default=None, choices=MODIFICATIONS,
                   help="seed 002: structured (channel) pruning, the only kind this toolkit does; accepted with "
                        "--pruning-params or --task sensitivity")
    p.add_argument("--pruning-params", default=None,
                   help="seed 002: prune the loaded model first: a rate for every layer, or \"[(layer, rate), ...]\" "
                        "(layer ids as in --task sensitivity's layers.txt / compress.py --show-groups)")
    if criterion:
        p.add_argument("--criterion", default=str(defaults("sensitivity")["criterion"]),
                       help="--pruning-params: seed 002's 0-6 (0 smallest L2 ... 6 random) or a name (l2, bn, ...)")


def strip_sensitivity_args(opt: dict, keys: tuple[str, ...] = _ARGS) -> dict:
    """val.py's options without the ones add_sensitivity_args added (for val.run); keys=PRUNING_ARGS: train.py's
    without the ones add_pruning_args added (its own --resume stays)."""
    return {k: v for k, v in opt.items() if k not in keys}


def _no_effect(flags: list[str], why: str) -> None:
    if flags:
        LOGGER.warning(f"WARNING: {', '.join(flags)} {'has' if len(flags) == 1 else 'have'} no effect {why}")


def check_seed_flags(opt: argparse.Namespace, given: set[str]) -> None:
    """Normalize seed 002's flags on val.py/train.py options (in place) and refuse or flag combinations that
    would do nothing: the task alias, --prune-output's stem, --pruning-params against the task."""
    if getattr(opt, "task", None) in TASK_ALIASES:
        opt.task = TASK_ALIASES[opt.task]
    task = getattr(opt, "task", None)
    flag = {k: "--" + k.replace("_", "-") for k in _ARGS}
    if opt.pruning_params is not None:
        if task in ("sensitivity", "speed"):
            raise UsageError(f"--pruning-params prunes the model once; --task {task} does not take it "
                             "(the analysis masks each layer at --pruning-rate)")
        try:
            opt.pruning_params = parse_pruning_params(opt.pruning_params)
        except (ValueError, SyntaxError) as e:
            raise UsageError(str(e).replace("\n", " ")) from None
        _criterion_name(opt.criterion)  # a bad criterion is reported before anything is loaded
    if hasattr(opt, "prune_output"):
        name = str(opt.prune_output)
        if not name or Path(name).name != name or not Path(name).stem:
            raise UsageError(f"--prune-output must be a file name such as output.txt (its stem names the "
                             f"{{stem}}_{{rate}}.txt files in the run folder), got {name!r}")
    if task != "sensitivity":
        if hasattr(opt, "pruning_rate"):  # val.py (train.py's --resume is its own)
            _no_effect([flag[k] for k in ("pruning_rate", "layers", "prune_output", "resume", "ignore") if k in given],
                       "without --task sensitivity")
        if opt.pruning_params is None:
            _no_effect([flag[k] for k in ("criterion", "modification") if k in given],
                       "without --pruning-params" + (" or --task sensitivity" if task else ""))


def load_pruned_model(weights, pruning_params, criterion, imgsz: int, nc: int | None = None, trust: bool = False,
                      fuse: bool = False, seed: int = 0):
    """Seed 002's prune-at-load for val.py and train.py: load `weights` (a checkpoint, or a yaml built with
    `nc` classes), remove the channels --pruning-params names by --criterion (prune.sensitivity.prune_layers,
    the plan compress.py --pruning-params uses), log the change, and fuse BatchNorm if asked.
    Returns (model, info) with info as prune_layers returns it (+ 'criterion'). Raises UsageError for a
    criterion or layer id that does not apply."""
    crit = _criterion_name(criterion)
    from_yaml = Path(str(weights)).suffix in (".yaml", ".yml")
    model = load_model(weights, nc=nc if from_yaml else None, trust=trust)  # unfused: BN criteria need BN
    stride = int(max(model.stride.max(), 32))
    try:
        info = prune_layers(model, pruning_params, crit, imgsz=(imgsz + stride - 1) // stride * stride, seed=seed)
    except ValueError as e:
        raise UsageError(f"--pruning-params: {e}") from None
    (p0, p1), (f0, f1) = info["params"], info["gflops"]
    LOGGER.info(f"--pruning-params: removed {info['channels']} channels in {info['layers']} layers by criterion "
                f"{crit}: {p0:,} -> {p1:,} params, {f0:.3f} -> {f1:.3f} GFLOPs at {imgsz}")
    info["criterion"] = crit
    return (fuse_model(model) if fuse else model), info


def _criterion_name(c) -> str:
    name = SEED_CRITERIA.get(int(c), str(c)) if str(c).strip().isdigit() else str(c).strip().lower()
    if name not in _CRITERIA:
        raise UsageError(f"--criterion must be 0-6 or one of {', '.join(_CRITERIA)}, got {c!r}")
    return name


def _parse_layers(text) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        v = ast.literal_eval(text) if isinstance(text, str) else text
        return [int(v)] if isinstance(v, int) else [int(x) for x in v]
    except (ValueError, SyntaxError, TypeError):
        raise UsageError(f"--layers must be a layer id or a list of ids, got {text!r}") from None


def _save_dir(opt, project: Path) -> Path:
    if opt.resume and opt.resume is not True:
        d = Path(opt.resume)
        if not (d / "args.json").exists():
            raise UsageError(f"--resume {d}: not a sensitivity analysis folder (no args.json)")
        return d
    if opt.resume:
        runs = sorted((p for p in project.glob(f"{opt.name}*") if (p / "args.json").exists()),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UsageError(f"--resume: no sensitivity analysis under {project}/{opt.name}*")
        return runs[-1]
    return increment_path(project / opt.name, exist_ok=opt.exist_ok)


def run_sensitivity(opt, weights: str | None = None) -> Path:
    """Run (or continue) the analysis of `weights` (default opt.weights) with val.py's options; returns the
    folder holding output_{rate}.txt."""
    try:
        rates = parse_rates(opt.pruning_rate)
    except (ValueError, SyntaxError, TypeError):
        raise UsageError(f"--pruning-rate must be a rate or a list of rates in (0, 1), got {opt.pruning_rate!r}") \
            from None
    crit = _criterion_name(opt.criterion)
    opt = argparse.Namespace(**{**vars(opt), "weights": weights or opt.weights})
    layers = _parse_layers(opt.layers)
    device = select_device(opt.device)
    from_yaml = Path(str(opt.weights)).suffix in (".yaml", ".yml")
    model = None if from_yaml else load_model(opt.weights, trust=opt.trust_checkpoint)  # unfused: BN criteria
    data = check_dataset(opt.data, splits=("val",))
    if model is None:
        model = load_model(opt.weights, nc=data["nc"])
    if model.nc != data["nc"] and not opt.single_cls:
        raise UsageError(f"{opt.weights} predicts {model.nc} classes but {data['yaml_file']} has {data['nc']}: "
                         "pass the matching --data (or --single-cls)")
    data = for_task(data, model_task(model))
    model.to(device).eval()
    stride = int(max(model.stride.max(), 32))
    imgsz = check_imgsz(opt.imgsz, stride)  # one warning when the size changes

    groups = build_groups(model, imgsz=imgsz, ignore=getattr(opt, "ignore", None))  # bad --ignore/--layers: before any folder
    if groups.ignored:
        LOGGER.info(groups.ignored_text())
    ids = [g.id for g in groups.prunable]
    if layers is not None:
        bad = sorted(set(layers) - set(ids))
        if bad:
            raise UsageError(f"--layers {bad}: not prunable layers (prunable: {ids})")

    project = Path(opt.project if opt.project != defaults()["project"] else defaults("sensitivity")["project"])
    save_dir = _save_dir(opt, project)
    stem = Path(str(opt.prune_output)).stem
    args = {"weights": str(opt.weights), "data": str(data["yaml_file"]), "imgsz": imgsz, "criterion": crit,
            "conf_thres": opt.conf_thres, "iou_thres": opt.iou_thres, "max_det": opt.max_det,
            "single_cls": opt.single_cls, "batch_size": opt.batch_size, "stem": stem}
    af = save_dir / "args.json"
    if af.exists():
        old = {"stem": DEFAULT_STEM, **json.loads(af.read_text())}  # folders from before --prune-output
        diff = [f"{k}: {old.get(k)!r} there, {args[k]!r} now" for k in _SAME if old.get(k) != args[k]]
        if diff:
            raise UsageError(f"{save_dir} holds an analysis with other settings ({'; '.join(diff)}): "
                             "use another --name")
        LOGGER.info(f"Continuing the sensitivity analysis in {save_dir}")
    else:
        write_json(args, af, indent=1)

    write_text(save_dir / "layers.txt", show_layers(groups, model) + "\n")  # ids, with seed 002's conv indices
    score = get_criterion(crit)
    scores = {g.id: score(model, g, seed=0) for g in groups.prunable}
    loader = build_val_loader(data, "val", imgsz, opt.batch_size, stride, opt.workers, opt.single_cls)
    settings = validation.ValSettings(conf_thres=opt.conf_thres, iou_thres=opt.iou_thres, max_det=opt.max_det,
                                      single_cls=opt.single_cls, half=opt.half, progress=False)

    def evaluate() -> dict:
        # validation.validate is looked up per call (tests count validations)
        res, _ = validation.validate(model, loader, data["names"], settings, device=device)
        return {"p": res.precision, "r": res.recall, "map50": res.map50, "map50_95": res.map50_95,
                "maps": [round(float(a), 6) for a in res.maps], "t_inf": res.speed_ms["inference"],
                "t_nms": res.speed_ms["nms"], "h": imgsz, "w": imgsz, "batch": opt.batch_size}

    n_params, n_gflops = count_params(model), gflops(model, imgsz)
    meta_f = save_dir / "meta.json"
    meta = json.loads(meta_f.read_text()) if meta_f.exists() else {}
    if "map50_95" not in meta:  # the unpruned model, once
        m = evaluate()
        meta = {"map50": m["map50"], "map50_95": m["map50_95"], "precision": m["p"], "recall": m["r"]}
    meta.update(criterion=crit, imgsz=imgsz, weights=str(opt.weights))
    LOGGER.info(f"Sensitivity analysis: {len(layers or ids)} layers x rates {rates}, criterion {crit}; "
                f"unpruned {n_params:,} params, {n_gflops:.3f} GFLOPs at {imgsz}, mAP50-95 {meta['map50_95']:.4f}")

    todo = layers or ids
    n_done = sum(len(set(done_layers(save_dir / f"{stem}_{r}.txt")) & set(todo)) for r in rates)
    pbar = TQDM(total=len(rates) * len(todo), initial=n_done, desc="sensitivity", disable=opt.no_progress)

    def progress(msg: str) -> None:
        pbar.set_description(msg)
        pbar.update(1)

    try:
        run_analysis(model, groups, evaluate, scores, rates, save_dir, n_params, n_gflops, progress=progress,
                     layers=layers, meta=meta, stem=stem)
    except KeyboardInterrupt:
        pbar.close()
        LOGGER.info(f"Interrupted: rerun the same command with --resume {save_dir} to continue")
        raise
    pbar.close()
    LOGGER.info(f"Results saved to {save_dir} ({stem}_{{rate}}.txt, sensitivity.csv, sensitivity.png, layers.txt)\n"
                f"Next: python layer_selection.py --output {save_dir} --params-layers N --flops-layers M")
    return save_dir
