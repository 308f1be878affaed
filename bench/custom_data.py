# AGPL-3.0 License
"""Your own data, every method: transfer-train a base, prune it to equal FLOPs with each method, fine-tune alike.

Protocol (docs/benchmarks/custom_data.md), on any data yaml; `--data aquarium.yaml` is the main benchmark, the
raccoon VOC asset (the default) the quick one:
  1. base: `--weights` (official yolov5n.pt) transfer-trained `--base-epochs` with train.py's defaults (hyp
     scratch-low, nominal batch 64), once, with the first of `--seeds`;
     control: that base trained `--epochs` E more the same way, nothing pruned (one per seed);
  2. every method in `--methods` prunes the base to each `--targets` share of its FLOPs (and to each
     `--divisor-targets` share with `--divisor`) and gets E epochs of training in all after the base (Group
     Fisher's pruning phase and slimming's sparsity phase included): pagcp (compress.py --target-flops F), fisher,
     l1-global, l1, slim (compress.py), tp-l2 and tp-groupnorm (Torch-Pruning, bench/tp_rows.py, then train.py's
     recovery recipe; skipped with one line without torch_pruning); `--compress-args` and each `--variant
     NAME=ARGS` pass compress.py flags through (variants are separate row sets, for ablations);
  3. every row per seed (`--seeds`); the table shows the mean ± half-range over seeds of mAP50-95 and of the share
     of the same seed's control, results.json each seed's values; onnxruntime CPU batch-1 latency of every model
     (the first seed's), timed interleaved with the base (engine/latency.py);
  4. results.md, results.csv, results.json, map_vs_gflops.png, map_vs_latency.png in the run folder.

Resumable per (row, seed): each finished step is recorded atomically in state.json and skipped when the same
command is run again (`--name N --exist-ok`) or with `--resume [DIR]`; more `--seeds` or methods may be added to a
run; a step killed half-way continues from its own checkpoints (train.py / compress.py --resume).

    python bench/custom_data.py --data ../shared/assets/datasets/aquarium.yaml --project ../runs-bench  # main
    YOLOC_DATASETS=../shared/assets/datasets python bench/custom_data.py --seeds 0                   # quick
    python bench/custom_data.py --data my.yaml --weights yolov5n.pt --imgsz 640 --base-epochs 100 --epochs 30 --device 0
    python bench/custom_data.py --methods pagcp --targets 0.5 --variant one-shot="--one-shot" --name ablation
    python bench/custom_data.py --resume                                             # continue the latest run
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from custom_report import RESUMED, write_report  # noqa: E402
from tp_rows import TP_LABELS, TP_METHODS, TP_MISSING, tp_available, tp_prune_checkpoint  # noqa: E402

import utils  # noqa: E402,F401
from utils.files import write_json, write_text  # noqa: E402
from utils.general import LOGGER, UsageError, increment_path  # noqa: E402

METHODS = ("pagcp", "fisher", "l1-global", "l1", "slim", *TP_METHODS)
LABELS = {"pagcp": "PAGCP", "fisher": "Group Fisher", "l1-global": "global L1", "l1": "uniform L1",
          "slim": "slimming (after sparsity)", **TP_LABELS}
# settings that decide the numbers: a run folder is only continued with the same ones (seeds, methods, targets and
# variants may grow: each step records its own compress.py flags)
RESULT_KEYS = ("weights", "data", "imgsz", "batch_size", "base_epochs", "base_hyp", "base_nbs", "epochs", "hyp",
               "warmup_epochs", "nbs", "calib_images", "sparsity", "sparsity_epochs", "fisher_interval",
               "fisher_channels", "fisher_phase_epochs", "compress_args")
# method x budget combinations compress.py cannot honour (reported, not run)
UNSUPPORTED = {("fisher", "divisor"): "compress.py --method fisher does not apply --divisor",
               **{(m, "divisor"): "the Torch-Pruning rows are cut without --divisor" for m in TP_METHODS}}
ASSETS = ROOT.parent / "shared" / "assets"
# defaults by data yaml stem (flags win): image size, base epochs, epochs after the base (docs/benchmarks/custom_data.md)
PROFILES = {"aquarium": {"imgsz": 256, "base_epochs": 16, "epochs": 16},
            "": {"imgsz": 320, "base_epochs": 20, "epochs": 4}}


def parse_opt(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="yolov5n.pt", help="pretrained model transfer-trained into the base")
    ap.add_argument("--data", default="raccoon.yaml", help="data yaml (YOLO or VOC layout)")
    ap.add_argument("--imgsz", "--img", type=int, default=None, help="train/val/latency image size (default: profile)")
    ap.add_argument("--batch-size", "--batch", type=int, default=16)
    ap.add_argument("--base-epochs", type=int, default=None, help="epochs of the base's transfer training (profile)")
    ap.add_argument("--base-hyp", default="scratch-low", help="hyp of the base and control (train.py's default)")
    ap.add_argument("--base-nbs", type=int, default=None, help="nominal batch of base and control (train.py's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs E of training after the base, equal for every "
                    "row (default: profile)")
    ap.add_argument("--hyp", default=None, help="fine-tune hyp of the pruned rows (default: compress.py's)")
    ap.add_argument("--warmup-epochs", type=float, default=None, help="fine-tune warmup (default: the hyp's)")
    ap.add_argument("--nbs", type=int, default=None, help="nominal batch of the fine-tunes (default: compress.py's)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                    help="pruned rows to run (none: only the base and the control)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.35], help="FLOPs shares of the base")
    ap.add_argument("--divisor-targets", type=float, nargs="*", default=[0.5], help="FLOPs shares run with --divisor")
    ap.add_argument("--divisor", type=int, default=16, help="channel multiple of the divisor variants")
    ap.add_argument("--tolerance", type=float, default=0.02, help="allowed |FLOPs share - target|")
    ap.add_argument("--calib-images", type=int, default=64, help="PAGCP oracle / BN re-estimation images")
    ap.add_argument("--sparsity", type=float, default=6e-4, help="slim: train.py --sparsity of the sparsity phase")
    ap.add_argument("--sparsity-epochs", type=int, default=3, help="slim: epochs of the sparsity phase (part of E)")
    ap.add_argument("--fisher-interval", type=int, default=1, help="fisher: training batches between prunes")
    ap.add_argument("--fisher-channels", type=int, default=64, help="fisher: channels masked per prune")
    ap.add_argument("--fisher-phase-epochs", type=int, default=1,
                    help="fisher: epochs of E given to its pruning phase (the fine-tune gets the rest)")
    ap.add_argument("--compress-args", default="", help='more compress.py flags for every compress.py row, e.g. '
                    '"--one-shot" (recorded in the settings)')
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="one more set of compress.py rows, labelled NAME, with ARGS added (repeatable)")
    ap.add_argument("--latency-repeats", type=int, default=20, help="timed runs per model (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for the latency (0 = torch's default)")
    ap.add_argument("--device", default="", help="cuda device (training and pruning); latency is CPU")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="every row runs once per seed; the base "
                    "is trained once, with the first")
    ap.add_argument("--project", default="runs/bench")
    ap.add_argument("--name", default="custom_data")
    ap.add_argument("--exist-ok", action="store_true", help="continue project/name if it exists (same settings)")
    ap.add_argument("--resume", nargs="?", const=True, default=False, help="continue the latest (or given) run")
    return ap.parse_args(argv)


def parse_variants(specs: list[str]) -> dict[str, str]:
    """`NAME=ARGS` strings -> {NAME: ARGS}; names are row labels (letters, digits, '-', '_'), each given once."""
    out = {}
    for spec in specs:
        name, sep, args = spec.partition("=")
        name = name.strip()
        if not sep or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise UsageError(f"--variant '{spec}': give NAME=ARGS, NAME of letters, digits, '-' or '_' "
                             "(e.g. --variant one-shot=\"--one-shot\")")
        if name in out:
            raise UsageError(f"--variant {name} is given twice: use one name per variant")
        _split(args, f"--variant {name}")
        out[name] = args.strip()
    return out


def _split(args: str, flag: str) -> list[str]:
    """Shell-split extra compress.py flags; unbalanced quotes are one clear line, before anything runs."""
    try:
        return shlex.split(args)
    except ValueError as e:
        raise UsageError(f"{flag} '{args}': {e}; quote the flags as one shell string") from None


def apply_profile(opt) -> dict:
    """Fill the size flags the user left out from the data's profile (PROFILES); returns the profile used."""
    prof = PROFILES.get(Path(str(opt.data)).stem, PROFILES[""])
    for k, v in prof.items():
        if getattr(opt, k) is None:
            setattr(opt, k, v)
    return prof


def _asset_defaults(opt) -> None:
    """The bench's defaults point at the shared assets when the user has no copy of their own."""
    import os

    if opt.weights == "yolov5n.pt" and not Path(opt.weights).exists() and (ASSETS / "weights/yolov5n.pt").exists():
        opt.weights = str(ASSETS / "weights/yolov5n.pt")
    if opt.data == "raccoon.yaml" and "YOLOC_DATASETS" not in os.environ and (ASSETS / "datasets").exists():
        os.environ["YOLOC_DATASETS"] = str(ASSETS / "datasets")
        LOGGER.info(f"YOLOC_DATASETS={ASSETS / 'datasets'} (the raccoon asset)")
    if opt.data == "aquarium.yaml" and not Path(opt.data).exists() and (ASSETS / "datasets/aquarium.yaml").exists():
        opt.data = str(ASSETS / "datasets/aquarium.yaml")


def run_folder(opt) -> Path:
    """The run folder, its settings checked (args.json) so a continued run never mixes settings."""
    grows = ("device", "workers", "resume", "exist_ok", "seeds", "methods", "targets", "divisor_targets", "variant",
             "latency_repeats", "threads")
    if opt.resume:
        if opt.resume is True or str(opt.resume) == "True":
            runs = sorted(Path(opt.project).glob("*/args.json"), key=lambda f: f.stat().st_mtime)
            if not runs:
                raise UsageError(f"--resume: no bench run under {opt.project}; pass --resume DIR")
            save_dir = runs[-1].parent
        else:
            save_dir = Path(opt.resume)
        if not (save_dir / "args.json").is_file():
            raise UsageError(f"--resume {save_dir}: not a custom_data bench run (no args.json)")
        saved = json.loads((save_dir / "args.json").read_text())
        for k, v in saved.items():
            if k not in ("device", "workers", "resume", "exist_ok"):
                setattr(opt, k, v)
        LOGGER.info(f"continuing {save_dir} with its saved settings (args.json)")
        return save_dir
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    args = {k: v for k, v in vars(opt).items() if k not in ("resume",)}
    if (save_dir / "args.json").is_file():
        saved = json.loads((save_dir / "args.json").read_text())
        diff = [k for k in RESULT_KEYS if saved.get(k) != args.get(k)]
        if diff:
            raise UsageError(f"{save_dir} was started with other settings ({', '.join(diff)}); use another --name "
                             f"or --resume {save_dir}")
        args = {**saved, **{k: args[k] for k in grows if k in args}}
    write_json(args, save_dir / "args.json")
    return save_dir


def seed_step(row: str, seed: int) -> str:
    """The state.json key of one row's run with one seed."""
    return f"{row}#s{seed}"


class Bench:
    def __init__(self, opt, save_dir: Path):
        self.opt, self.dir = opt, save_dir
        self.state_file = save_dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.ft_hyp = opt.hyp  # --hyp with --warmup-epochs: every fine-tune's hyp, written once
        if opt.warmup_epochs is not None:
            import yaml

            from engine.recipe import recipe
            from engine.trainer import load_hyp

            self.ft_hyp = str(save_dir / "hyp_finetune.yaml")
            if not Path(self.ft_hyp).is_file():
                hyp = {**load_hyp(opt.hyp or recipe()["hyp"]), "warmup_epochs": opt.warmup_epochs}
                write_text(self.ft_hyp, yaml.safe_dump(hyp, sort_keys=False))

    def done(self, step: str, args: str | None = None) -> dict | None:
        r = self.state.get(step)
        if r and args is not None and r.get("compress_args", args) != args:
            raise UsageError(f"{step} in {self.dir} ran with compress.py flags '{r['compress_args']}', now '{args}': "
                             "use another --variant name or another --name")
        return r

    def record(self, step: str, value: dict) -> dict:
        self.state[step] = value
        write_json(self.state, self.state_file)  # atomic: a kill leaves the previous state
        return value

    # ------------------------------------------------------------------ training steps (train.py)
    def train_step(self, step: str, weights: str, epochs: int, seed: int, info: dict | None = None, **kw) -> dict:
        """train.py on `weights` for `epochs` (kw: train options; None values are train.py's defaults)."""
        from engine.trainer import train
        from utils.checkpoint import load_checkpoint

        if self.done(step):
            return self.done(step)
        o, folder = self.opt, self.dir / "steps" / step
        last = folder / "weights" / "last.pt"
        t0 = time.time()
        resumable = last.is_file() and load_checkpoint(last).get("optimizer") is not None
        if resumable:
            LOGGER.info(f"{step}: continuing {last}")
            res = train(resume=str(last), device=o.device, workers=o.workers)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # a start killed before its first checkpoint
            res = train(weights=weights, data=o.data, epochs=epochs, imgsz=o.imgsz, batch_size=o.batch_size,
                        device=o.device, workers=o.workers, seed=seed, save_dir=str(folder),
                        **{k: v for k, v in kw.items() if v is not None})
        weights = str(res.best or res.last)
        m = self.evaluate(weights)  # as compress.py validates every pruned model
        return self.record(step, {**(info or {}), "weights": weights, "model": weights, "epochs": epochs,
                                  "train_epochs": epochs, "map50": m.map50, "map50_95": m.map50_95, "seed": seed,
                                  "seconds": round(time.time() - t0, 1), "resumed": resumable,
                                  "notes": [RESUMED] if resumable else []})

    def evaluate(self, weights: str):
        from data.datasets import check_dataset
        from engine.compressor import Evaluator
        from models.loader import load_model
        from utils.general import select_device

        o, device = self.opt, select_device(self.opt.device)
        model = load_model(weights).to(device)
        ev = Evaluator(check_dataset(o.data, ("val",)), o.imgsz, o.batch_size, device, o.workers,
                       int(max(model.stride.max(), 32)))
        return ev(model)

    # ------------------------------------------------------------------ Torch-Pruning rows (bench/tp_rows.py)
    def tp_step(self, step: str, weights: str, method: str, target: float, seed: int) -> dict:
        """Cut the base with torch-pruning to `target` (once, shared by the seeds), fine-tune E epochs with
        train.py's recovery recipe (the fine-tune flags of this bench when given)."""
        from engine.recipe import recipe

        if self.done(step):
            return self.done(step)
        o, row = self.opt, step.rsplit("#", 1)[0]
        cut = self.dir / "steps" / f"{row}-cut" / "pruned.pt"
        info = self.done(f"{row}-cut")
        if not info:
            t0 = time.time()
            cut.parent.mkdir(parents=True, exist_ok=True)
            info = tp_prune_checkpoint(weights, method, target, o.imgsz, cut)
            m = self.evaluate(str(cut))
            info = self.record(f"{row}-cut", {**info, "map50_pruned": m.map50, "map50_95_pruned": m.map50_95,
                                              "cut_seconds": round(time.time() - t0, 1)})
        notes = [f"FLOPs share {info['flops_share']:.3f} misses {target} ± {o.tolerance}"] \
            if abs(info["flops_share"] - target) > o.tolerance else []
        rec = recipe()
        r = self.train_step(step, str(cut), o.epochs, seed, hyp=self.ft_hyp or rec.get("hyp"),
                            nbs=o.nbs or rec.get("nbs"),
                            info={"method": method, "target": target, "divisor": 1, "params": info["params"],
                                  "gflops": info["gflops"], "flops_share": info["flops_share"],
                                  "map50_pruned": info["map50_pruned"], "map50_95_pruned": info["map50_95_pruned"]})
        r["notes"] = notes + r["notes"]
        return r

    # ------------------------------------------------------------------ pruning steps (compress.py)
    def compress_step(self, step: str, weights: str, method: str, target: float, divisor: int, seed: int,
                      cargs: str) -> dict:
        import compress

        if self.done(step, cargs):
            return self.done(step, cargs)
        o = self.opt
        project, folder = self.dir / "steps", self.dir / "steps" / step
        epochs = o.epochs - {"fisher": o.fisher_phase_epochs, "slim": o.sparsity_epochs}.get(method, 0)
        flags = method_flags(method, target, o) + (["--divisor", str(divisor)] if divisor > 1 else [])
        args = ["--weights", weights, "--data", o.data, "--img", str(o.imgsz), "--batch-size", str(o.batch_size),
                "--epochs", str(epochs), "--calib-images", str(o.calib_images), "--seed", str(seed), "--device",
                str(o.device), "--workers", str(o.workers), "--no-latency",
                *(["--hyp", self.ft_hyp] if self.ft_hyp else []), *(["--nbs", str(o.nbs)] if o.nbs else []),
                *flags, *shlex.split(cargs)]
        t0 = time.time()
        resumed = (folder / "opt.json").is_file()
        if resumed:
            LOGGER.info(f"{step}: continuing {folder}")
            rc = compress.main(["--resume", str(folder), "--device", str(o.device), "--workers", str(o.workers)])
        else:
            shutil.rmtree(folder, ignore_errors=True)
            rc = compress.main([*args, "--project", str(project), "--name", step])
        if rc:
            if rc == 130:
                raise KeyboardInterrupt
            LOGGER.warning(f"{step}: compress.py {' '.join(args)} failed (exit {rc}); it is retried on the next run")
            return {"error": f"compress.py exit {rc}"}
        s = json.loads((folder / "summary.json").read_text())
        r = s["rounds"][-1]
        share = s["flops_ratio"]
        off = [g for g in (s.get("groups") or []) if divisor > 1 and g["after"] != g["before"]
               and g["after"] % divisor]
        notes = []
        if abs(share - target) > o.tolerance:
            notes.append(f"FLOPs share {share:.3f} misses {target} ± {o.tolerance}")
        if off:
            notes.append(f"{len(off)} group(s) not a multiple of {divisor}")
        if resumed:
            notes.append(RESUMED)
        # training after the base: every round's fine-tune, plus Group Fisher's pruning phases and slimming's
        # sparsity phase (both train on the data too)
        train_epochs = s.get("epochs", epochs) * len(s["rounds"])
        phase = sum(json.loads(f.read_text()).get("epochs") or 0 for f in folder.glob("round_*/fisher.json"))
        train_epochs += phase + (o.sparsity_epochs if method == "slim" else 0)
        if method == "fisher" and abs(phase - o.fisher_phase_epochs) > 0.5:
            notes.append(f"pruning phase {phase:.1f} epochs, not {o.fisher_phase_epochs} (--fisher-phase-epochs)")
        return self.record(step, {
            "method": method, "target": target, "divisor": divisor, "model": str(folder / "pruned.pt"), "seed": seed,
            "compress_args": cargs, "params": r["params"], "gflops": r["gflops"], "flops_share": share,
            "map50_pruned": r["pruned_metrics"]["map50"], "map50_95_pruned": r["pruned_metrics"]["map50_95"],
            "map50": r["map50"], "map50_95": r["map50_95"], "seconds": round(s["seconds"], 1),
            "wall_seconds": round(time.time() - t0, 1), "source_map50_95": s["base"]["map50_95"],
            "train_epochs": round(train_epochs, 2), "notes": notes})

    # ------------------------------------------------------------------ latency (engine/latency.py)
    def latency_step(self, models: dict[str, str]) -> dict:
        from engine.latency import compare_latency, environment, resolve_threads
        from models.loader import load_model

        key = sorted(models)
        prev = self.done("latency")
        if prev and prev.get("models") == key:
            return prev
        threads = resolve_threads(self.opt.threads)
        loaded = {k: load_model(p).eval() for k, p in models.items()}
        rows = compare_latency(loaded, self.opt.imgsz, (1,), ("onnxruntime",), "cpu", threads=threads, warmup=5,
                               repeats=self.opt.latency_repeats)
        ms = {r["model"]: r["ms_per_image"] for r in rows}
        return self.record("latency", {"models": key, "ms": ms, "threads": threads, "repeats": self.opt.latency_repeats,
                                       "environment": environment(threads)})


def method_flags(method: str, target: float, o) -> list[str]:
    """compress.py flags that prune with `method` to `target` of the base FLOPs (the sparse model for slim)."""
    t = ["--target-flops", f"{target:g}"]
    if method == "pagcp":
        return ["--method", "pagcp", *t]
    if method == "fisher":
        return ["--method", "fisher", "--interval", str(o.fisher_interval), "--channels-per-step",
                str(o.fisher_channels), *t]
    if method == "l1-global":
        return ["--method", "l1", "--global", *t]
    if method in ("l1", "slim"):
        return ["--method", method, *t]
    raise UsageError(f"unknown method '{method}'")


def plan(opt, variants: dict[str, str] | None = None) -> list[tuple[str, str, float, int, str]]:
    """(row, method, target, divisor, compress.py flags) of every pruned row, in order; each variant repeats the
    compress.py rows as `NAME/row` with its flags added to --compress-args (Torch-Pruning rows are not varied)."""
    out = []
    for vname, vargs in {"": "", **(variants or {})}.items():
        cargs = " ".join(a for a in (opt.compress_args, vargs) if a)
        for m in opt.methods:
            if vname and m in TP_METHODS:
                continue
            pre = f"{vname}/" if vname else ""
            out += [(f"{pre}{m}@{t:g}", m, t, 1, cargs) for t in opt.targets]
            out += [(f"{pre}{m}@{t:g}-d{opt.divisor}", m, t, opt.divisor, cargs) for t in opt.divisor_targets]
    return out


def select_rows(rows: list[tuple]) -> tuple[list[tuple], dict[str, str]]:
    """The rows of `plan` that can run, and {row: why not} for the others; without torch_pruning the
    Torch-Pruning rows are skipped with one logged line."""
    todo, skipped, tp_ok = [], {}, None
    for r in rows:
        row, method, divisor = r[0], r[1], r[3]
        why = UNSUPPORTED.get((method, "divisor")) if divisor > 1 else None
        if method in TP_METHODS and not why:
            if tp_ok is None:
                tp_ok = tp_available()
                if not tp_ok:
                    LOGGER.warning(TP_MISSING)
            why = None if tp_ok else TP_MISSING
        if why:
            skipped[row] = why
        else:
            todo.append(r)
    return todo, skipped


def check_opt(opt) -> dict[str, str]:
    """One clear line for bad input, before any run folder exists; returns the parsed variants."""
    for t in [*opt.targets, *opt.divisor_targets]:
        if not 0 < t < 1:
            raise UsageError(f"FLOPs targets must be in (0, 1), got {t}")
    if min(opt.base_epochs, opt.epochs) < 1:
        raise UsageError("--base-epochs and --epochs must be >= 1")
    for m, pre in (("fisher", opt.fisher_phase_epochs), ("slim", opt.sparsity_epochs)):
        if m in opt.methods and pre >= opt.epochs:
            raise UsageError(f"--epochs {opt.epochs} leaves no fine-tune for {m} after its {pre}-epoch phase: give "
                             f"--epochs > {pre} (every row trains --epochs in all after the base)")
    if len(set(opt.seeds)) != len(opt.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, opt.seeds))}: each seed once")
    _split(opt.compress_args, "--compress-args")
    return parse_variants(opt.variant)


def run(opt) -> Path:
    apply_profile(opt)
    variants = check_opt(opt)
    _asset_defaults(opt)
    from data.datasets import check_dataset

    check_dataset(opt.data, splits=("train", "val"))  # one clear line before any run folder exists
    save_dir = run_folder(opt)
    b = Bench(opt, save_dir)
    t_start = time.time()
    base = b.train_step("base", opt.weights, opt.base_epochs, opt.seeds[0], hyp=opt.base_hyp, nbs=opt.base_nbs)
    base = {**base, "train_epochs": 0}
    steps = {"control": {s: b.train_step(seed_step("control", s), base["weights"], opt.epochs, s, hyp=opt.base_hyp,
                                         nbs=opt.base_nbs) for s in opt.seeds}}
    sparse = {s: b.train_step(seed_step("sparse", s), base["weights"], opt.sparsity_epochs, s, hyp=b.ft_hyp,
                              nbs=opt.nbs, sparsity=opt.sparsity) for s in opt.seeds} if "slim" in opt.methods else {}
    todo, skipped = select_rows(plan(opt, variants))
    for row, method, target, divisor, cargs in todo:
        steps[row] = {}
        for s in opt.seeds:
            LOGGER.info(f"\n=== {row}, seed {s}: {LABELS[method]} to {target:g} of the base FLOPs"
                        f"{f', divisor {divisor}' if divisor > 1 else ''} ===")
            if method in TP_METHODS:
                steps[row][s] = b.tp_step(seed_step(row, s), base["weights"], method, target, s)
            else:
                weights = sparse[s]["weights"] if method == "slim" else base["weights"]
                steps[row][s] = b.compress_step(seed_step(row, s), weights, method, target, divisor, s, cargs)
    models = {"base": base["weights"]}
    for row, per in steps.items():
        first = next((r for r in per.values() if "error" not in r), None)
        if first and row != "control":
            models[row] = first["model"]
    lat = b.latency_step(models)
    settings = {k: getattr(opt, k, None) for k in (*RESULT_KEYS, "seeds", "variant", "methods", "targets")}
    write_report(opt, save_dir, base, steps, sparse, skipped, lat, LABELS, settings, time.time() - t_start)
    return save_dir


def main(argv=None) -> int:
    from data.datasets import DataConfigError
    from utils.checkpoint import CheckpointError

    try:
        run(parse_opt(argv))
    except (UsageError, CheckpointError, DataConfigError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again (or --resume) to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
