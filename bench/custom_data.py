# AGPL-3.0 License
"""Your own data, every method: transfer-train a base, prune it to equal FLOPs with each method, fine-tune alike.

The workflow of issue 14 on one dataset (default: the raccoon VOC asset, any data yaml accepted):
  1. base: `--weights` (official yolov5n.pt) transfer-trained `--base-epochs` on the data (train.py);
     reference: the same base trained `--epochs` more with the fine-tune settings and no pruning, i.e. the
     unpruned model after the same total epochs as every pruned one (extra training is not pruning gain);
  2. every method in `--methods` prunes the base to each `--targets` share of its FLOPs (and to each
     `--divisor-targets` share with `--divisor`), then fine-tunes `--epochs` with the same settings (compress.py);
     methods: pagcp (`compress.py --target-flops F`, the default method), fisher (Group Fisher), l1-global,
     l1 (uniform ratio), slim (network slimming of the base after `--sparsity-epochs` of train.py --sparsity);
  3. per run: params, GFLOPs, FLOPs share (target ± `--tolerance`, else marked), mAP50 / mAP50-95 before and
     after fine-tuning, compute seconds; then every model's onnxruntime CPU batch-1 latency, all timed
     interleaved in one session with the base (engine/latency.py);
  4. results.md (table), results.csv, results.json, map_vs_gflops.png, map_vs_latency.png in the run folder.

Resumable: each finished step is recorded atomically in state.json and skipped when the same command is run
again (`--name N --exist-ok`) or with `--resume [DIR]`; a step killed half-way continues from its own
checkpoints (train.py / compress.py --resume).

    YOLOC_DATASETS=../shared/assets/datasets python bench/custom_data.py            # defaults (~90 min, 2 CPU cores)
    python bench/custom_data.py --data my.yaml --weights yolov5n.pt --imgsz 640 --base-epochs 100 --epochs 30 --device 0
    python bench/custom_data.py --methods l1 l1-global fisher --targets 0.7 0.5 --name quick --exist-ok
    python bench/custom_data.py --resume                                             # continue the latest run
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401
from utils.files import write_json, write_text  # noqa: E402
from utils.general import LOGGER, UsageError, increment_path  # noqa: E402

METHODS = ("pagcp", "fisher", "l1-global", "l1", "slim")
LABELS = {"pagcp": "PAGCP", "fisher": "Group Fisher", "l1-global": "global L1", "l1": "uniform L1",
          "slim": "slimming (after sparsity)"}
# settings that decide the numbers: a run folder is only continued with the same ones
RESULT_KEYS = ("weights", "data", "imgsz", "batch_size", "base_epochs", "base_hyp", "epochs", "hyp", "warmup_epochs",
               "nbs", "distill",
               "calib_images", "sparsity", "sparsity_epochs", "fisher_interval", "fisher_channels", "seed", "extra")
# method x budget combinations compress.py cannot honour (reported, not run)
UNSUPPORTED = {("fisher", "divisor"): "compress.py --method fisher does not apply --divisor"}
ASSETS = ROOT.parent / "shared" / "assets"
RESUMED = "resumed after an interruption: seconds leave out the interrupted part"


def parse_opt(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="yolov5n.pt", help="pretrained model transfer-trained into the base")
    ap.add_argument("--data", default="raccoon.yaml", help="data yaml (YOLO or VOC layout)")
    ap.add_argument("--imgsz", "--img", type=int, default=320, help="train/val/latency image size (pixels)")
    ap.add_argument("--batch-size", "--batch", type=int, default=16)
    ap.add_argument("--base-epochs", type=int, default=20, help="epochs of the base's transfer training")
    ap.add_argument("--base-hyp", default="scratch-low", help="hyp of the base training (train.py --hyp)")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tune epochs after pruning (equal for all)")
    ap.add_argument("--hyp", default="recovery", help="fine-tune hyp (equal for all, and for the reference): compress.py's")
    ap.add_argument("--warmup-epochs", type=float, default=0.0,
                    help="fine-tune warmup (overrides the hyp's; YOLOv5 warms up >= 100 iterations whenever > 0)")
    ap.add_argument("--nbs", type=int, default=16, help="nominal batch size of every training (train.py --nbs)")
    ap.add_argument("--distill", action="store_true",
                    help="fine-tune with the base as distillation teacher (compress.py's default; off here unless given)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.35], help="FLOPs shares of the base")
    ap.add_argument("--divisor-targets", type=float, nargs="*", default=[0.5], help="FLOPs shares run with --divisor")
    ap.add_argument("--divisor", type=int, default=16, help="channel multiple of the divisor variants")
    ap.add_argument("--tolerance", type=float, default=0.02, help="allowed |FLOPs share - target|")
    ap.add_argument("--calib-images", type=int, default=64, help="PAGCP oracle / BN re-estimation images")
    ap.add_argument("--sparsity", type=float, default=6e-4, help="slim: train.py --sparsity of the sparsity phase")
    ap.add_argument("--sparsity-epochs", type=int, default=3, help="slim: epochs of the sparsity phase")
    ap.add_argument("--fisher-interval", type=int, default=1, help="fisher: training batches between prunes")
    ap.add_argument("--fisher-channels", type=int, default=64, help="fisher: channels masked per prune")
    ap.add_argument("--latency-repeats", type=int, default=20, help="timed runs per model (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for the latency (0 = torch's default)")
    ap.add_argument("--device", default="", help="cuda device (training and pruning); latency is CPU")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--project", default="runs/bench")
    ap.add_argument("--name", default="custom_data")
    ap.add_argument("--exist-ok", action="store_true", help="continue project/name if it exists (same settings)")
    ap.add_argument("--resume", nargs="?", const=True, default=False, help="continue the latest (or given) run")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more compress.py flags for every run")
    return ap.parse_args(argv)


def _asset_defaults(opt) -> None:
    """The bench's defaults point at the shared assets when the user has no copy of their own."""
    import os

    if opt.weights == "yolov5n.pt" and not Path(opt.weights).exists() and (ASSETS / "weights/yolov5n.pt").exists():
        opt.weights = str(ASSETS / "weights/yolov5n.pt")
    if opt.data == "raccoon.yaml" and "YOLOC_DATASETS" not in os.environ and (ASSETS / "datasets").exists():
        os.environ["YOLOC_DATASETS"] = str(ASSETS / "datasets")
        LOGGER.info(f"YOLOC_DATASETS={ASSETS / 'datasets'} (the raccoon asset)")


def run_folder(opt) -> Path:
    """The run folder, its settings checked (args.json) so a continued run never mixes settings."""
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
    write_json(args, save_dir / "args.json")
    return save_dir


class Bench:
    def __init__(self, opt, save_dir: Path):
        self.opt, self.dir = opt, save_dir
        self.state_file = save_dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.ft_hyp = str(save_dir / "hyp_finetune.yaml")  # --hyp with --warmup-epochs: every fine-tune's hyp
        if not Path(self.ft_hyp).is_file():
            import yaml

            from engine.trainer import load_hyp

            write_text(self.ft_hyp, yaml.safe_dump({**load_hyp(opt.hyp), "warmup_epochs": opt.warmup_epochs},
                                                   sort_keys=False))

    def done(self, step: str) -> dict | None:
        return self.state.get(step)

    def record(self, step: str, value: dict) -> dict:
        self.state[step] = value
        write_json(self.state, self.state_file)  # atomic: a kill leaves the previous state
        return value

    # ------------------------------------------------------------------ training steps (train.py)
    def train_step(self, step: str, weights: str, epochs: int, hyp: str, **extra) -> dict:
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
            res = train(weights=weights, data=o.data, epochs=epochs, imgsz=o.imgsz, batch_size=o.batch_size, hyp=hyp,
                        nbs=o.nbs, device=o.device, workers=o.workers, seed=o.seed, save_dir=str(folder), **extra)
        weights = str(res.best or res.last)
        m = self.evaluate(weights)  # as compress.py validates every pruned model
        return self.record(step, {"weights": weights, "epochs": epochs, "map50": m.map50, "map50_95": m.map50_95,
                                  "seconds": round(time.time() - t0, 1), "resumed": resumable})

    def evaluate(self, weights: str):
        from engine.compressor import Evaluator
        from data.datasets import check_dataset
        from models.loader import load_model
        from utils.general import select_device

        o, device = self.opt, select_device(self.opt.device)
        model = load_model(weights).to(device)
        ev = Evaluator(check_dataset(o.data, ("val",)), o.imgsz, o.batch_size, device, o.workers,
                       int(max(model.stride.max(), 32)))
        return ev(model)

    # ------------------------------------------------------------------ pruning steps (compress.py)
    def compress_step(self, step: str, weights: str, method: str, target: float, divisor: int) -> dict:
        import compress

        if self.done(step):
            return self.done(step)
        o = self.opt
        project, folder = self.dir / "steps", self.dir / "steps" / step
        flags = method_flags(method, target, o) + (["--divisor", str(divisor)] if divisor > 1 else [])
        args = ["--weights", weights, "--data", o.data, "--img", str(o.imgsz), "--batch-size", str(o.batch_size),
                "--epochs", str(o.epochs), "--hyp", self.ft_hyp, "--nbs", str(o.nbs), "--calib-images",
                str(o.calib_images), "--seed", str(o.seed), "--device", str(o.device), "--workers", str(o.workers),
                "--no-latency",
                *([] if o.distill else ["--no-distill"]), *flags, *o.extra]
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
        train_epochs = s.get("epochs", o.epochs) * len(s["rounds"])
        train_epochs += sum(json.loads(f.read_text()).get("epochs") or 0 for f in folder.glob("round_*/fisher.json"))
        if method == "slim":
            train_epochs += o.sparsity_epochs
        return self.record(step, {
            "method": method, "target": target, "divisor": divisor, "model": str(folder / "pruned.pt"),
            "params": r["params"], "gflops": r["gflops"], "flops_share": share,
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
        return ["--method", "pagcp", *t]  # PAGCP to a FLOPs target (issue 15)
    if method == "fisher":
        return ["--method", "fisher", "--interval", str(o.fisher_interval), "--channels-per-step",
                str(o.fisher_channels), *t]
    if method == "l1-global":
        return ["--method", "l1", "--global", *t]
    if method in ("l1", "slim"):
        return ["--method", method, *t]
    raise UsageError(f"unknown method '{method}'")


def plan(opt) -> list[tuple[str, str, float, int]]:
    """(step, method, target, divisor) of every pruning run, in order."""
    out = []
    for m in opt.methods:
        out += [(f"{m}@{t:g}", m, t, 1) for t in opt.targets]
        out += [(f"{m}@{t:g}-d{opt.divisor}", m, t, opt.divisor) for t in opt.divisor_targets]
    return out


def run(opt) -> Path:
    for t in [*opt.targets, *opt.divisor_targets]:
        if not 0 < t < 1:
            raise UsageError(f"FLOPs targets must be in (0, 1), got {t}")
    if min(opt.base_epochs, opt.epochs) < 1:
        raise UsageError("--base-epochs and --epochs must be >= 1")
    _asset_defaults(opt)
    from data.datasets import check_dataset

    check_dataset(opt.data, splits=("train", "val"))  # one clear line before any run folder exists
    save_dir = run_folder(opt)
    b = Bench(opt, save_dir)
    t_start = time.time()
    base = b.train_step("base", opt.weights, opt.base_epochs, opt.base_hyp)
    ref = b.train_step("reference", base["weights"], opt.epochs, b.ft_hyp)
    sparse = b.train_step("sparse", base["weights"], opt.sparsity_epochs, b.ft_hyp, sparsity=opt.sparsity) \
        if "slim" in opt.methods else None
    runs, skipped = {}, {}
    for step, method, target, divisor in plan(opt):
        why = UNSUPPORTED.get((method, "divisor")) if divisor > 1 else None
        if why:
            skipped[step] = why
            continue
        weights = sparse["weights"] if method == "slim" else base["weights"]
        LOGGER.info(f"\n=== {step}: {LABELS[method]} to {target:g} of the base FLOPs"
                    f"{f', divisor {divisor}' if divisor > 1 else ''} ===")
        runs[step] = b.compress_step(step, weights, method, target, divisor)
    ok = {k: r for k, r in runs.items() if "error" not in r}
    lat = b.latency_step({"base": base["weights"], **{k: r["model"] for k, r in ok.items()}})
    write_report(opt, save_dir, base, ref, sparse, runs, skipped, lat, time.time() - t_start)
    return save_dir


def _rows(opt, base, ref, sparse, runs, skipped, lat) -> list[dict]:
    from models.loader import load_model
    from utils.flops import count_params, gflops

    m = load_model(base["weights"])
    b_params, b_gflops = count_params(m), gflops(m, opt.imgsz)
    ms = lat["ms"]
    rows = [{"run": "base", "method": f"unpruned, {opt.base_epochs} epochs", "target": 1.0, "divisor": 1,
             "params": b_params, "gflops": b_gflops, "flops_share": 1.0, "map50": base["map50"],
             "map50_95": base["map50_95"], "latency_ms": ms.get("base"), "seconds": base["seconds"], "train_epochs": 0,
             "notes": [RESUMED] if base.get("resumed") else []},
            {"run": "reference", "method": f"unpruned, {opt.base_epochs}+{opt.epochs} epochs", "target": 1.0,
             "divisor": 1, "params": b_params, "gflops": b_gflops, "flops_share": 1.0, "map50": ref["map50"],
             "map50_95": ref["map50_95"], "latency_ms": ms.get("base"), "seconds": ref["seconds"],
             "train_epochs": opt.epochs,
             "notes": [RESUMED] if ref.get("resumed") else []}]
    for step, r in runs.items():
        if "error" in r:
            rows.append({"run": step, "method": LABELS[step.split("@")[0]], "notes": [r["error"]]})
            continue
        notes = list(r["notes"])
        if r["method"] == "slim" and sparse:
            notes.append(f"+{sparse['seconds']:.0f} s sparsity phase ({opt.sparsity_epochs} epochs, shared; sparse "
                         f"model mAP50-95 {r['source_map50_95']:.3f})")
        if r["method"] == "fisher":
            notes.append("its pruning phase trains on the data" + (
                f" ({r['train_epochs'] - opt.epochs:.1f} epochs before the fine-tune)"
                if r.get("train_epochs") is not None else ""))
        rows.append({**r, "run": step, "method": LABELS[r["method"]], "latency_ms": ms.get(step), "notes": notes})
    for step, why in skipped.items():
        rows.append({"run": step, "method": LABELS[step.split("@")[0]], "notes": [f"not run: {why}"]})
    base_map, base_ms = base["map50_95"], ms.get("base")
    for r in rows:
        if r.get("map50_95") is not None and base_map:
            r["share_of_base_map50_95"] = r["map50_95"] / base_map
        if r.get("latency_ms") and base_ms:
            r["speedup"] = base_ms / r["latency_ms"]
    return rows


def _fmt(v, f):
    return "" if v is None else format(v, f)


def write_report(opt, save_dir: Path, base, ref, sparse, runs, skipped, lat, seconds: float) -> None:
    rows = _rows(opt, base, ref, sparse, runs, skipped, lat)
    head = ("| run | method | divisor | params | GFLOPs | FLOPs share | mAP50 pruned | mAP50-95 pruned | mAP50 | "
            "mAP50-95 | share of base mAP50-95 | epochs after base | ms (ORT CPU, bs 1) | speedup | compute s | notes |")
    lines = [f"Data {opt.data}, weights {Path(opt.weights).name}, {opt.imgsz} px; base {opt.base_epochs} epochs "
             f"(hyp {opt.base_hyp}), fine-tune {opt.epochs} epochs (hyp {opt.hyp}, warmup {opt.warmup_epochs:g} epochs"
             f"{', distillation' if opt.distill else ''}), nominal batch {opt.nbs}"
             f"; latency: onnxruntime CPU, batch 1, {lat['threads']} threads, median of {lat['repeats']} runs, all "
             f"models interleaved. mAP after fine-tuning unless marked 'pruned'.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['method']} | {r.get('divisor', '')} | {_fmt(r.get('params'), ',d')} | "
            f"{_fmt(r.get('gflops'), '.3f')} | {_fmt(r.get('flops_share'), '.3f')} | {_fmt(r.get('map50_pruned'), '.3f')} | "
            f"{_fmt(r.get('map50_95_pruned'), '.3f')} | {_fmt(r.get('map50'), '.3f')} | {_fmt(r.get('map50_95'), '.3f')} | "
            f"{_fmt(r.get('share_of_base_map50_95'), '.2f')} | {_fmt(r.get('train_epochs'), 'g')} | "
            f"{_fmt(r.get('latency_ms'), '.2f')} | "
            f"{_fmt(r.get('speedup'), '.2f')} | {_fmt(r.get('seconds'), '.0f')} | {'; '.join(r.get('notes', []))} |")
    lines.append(f"\nTotal {seconds / 60:.1f} min in this invocation (earlier, resumed steps excluded).")
    write_text(save_dir / "results.md", "\n".join(lines) + "\n")
    keys = ["run", "method", "target", "divisor", "params", "gflops", "flops_share", "map50_pruned", "map50_95_pruned",
            "map50", "map50_95", "share_of_base_map50_95", "train_epochs", "latency_ms", "speedup", "seconds", "notes"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "notes": "; ".join(r.get("notes", []))})
    write_text(save_dir / "results.csv", buf.getvalue())
    write_json({"settings": {k: getattr(opt, k) for k in RESULT_KEYS}, "latency": lat, "rows": rows},
               save_dir / "results.json")
    plot_results(rows, opt, lat, save_dir)
    LOGGER.info("\n".join(lines))
    LOGGER.info(f"Results saved to {save_dir}: results.md, results.csv, results.json, map_vs_gflops.png, "
                "map_vs_latency.png")


def plot_results(rows: list[dict], opt, lat: dict, save_dir: Path) -> None:
    """mAP50-95 against GFLOPs and against measured latency: one line per method, unpruned models as points."""
    from utils.plots import _plt

    plt = _plt()
    axes_spec = (("gflops", f"GFLOPs at {opt.imgsz}x{opt.imgsz}", "map_vs_gflops.png"),
                 ("latency_ms", f"latency, ms per image (onnxruntime CPU, batch 1, {lat['threads']} threads)",
                  "map_vs_latency.png"))
    for key, xlabel, fname in axes_spec:
        fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, label in enumerate(dict.fromkeys(r["method"] for r in rows if r["run"] not in ("base", "reference"))):
            pts = [r for r in rows if r["method"] == label and r.get(key) is not None and r.get("map50_95") is not None]
            line = sorted((r for r in pts if r.get("divisor", 1) == 1), key=lambda r: r[key])
            c = colors[i % len(colors)]
            ax.plot([r[key] for r in line], [r["map50_95"] for r in line], "o-", color=c, label=label)
            div = [r for r in pts if r.get("divisor", 1) > 1]
            if div:
                ax.plot([r[key] for r in div], [r["map50_95"] for r in div], "s", mfc="none", color=c,
                        label=f"{label}, divisor {opt.divisor}")
        for r, marker in zip((rows[0], rows[1]), ("*", "D")):
            if r.get(key) is not None:
                ax.plot([r[key]], [r["map50_95"]], marker, color="black", markersize=11 if marker == "*" else 7,
                        label=r["method"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50-95 (val) after fine-tuning")
        ax.set_title(f"{Path(opt.data).stem}: pruned to equal FLOPs, {opt.epochs} fine-tune epochs each")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(save_dir / fname, dpi=150)
        plt.close(fig)


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
