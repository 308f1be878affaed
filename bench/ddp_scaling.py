# AGPL-3.0 License
"""Throughput of compress.py's two distributed stages with 1 and N processes under torchrun (one device each:
gloo on CPU cores, NCCL on GPUs), measured side by side:

  * the PAGCP oracle pass (`compress.py --epochs 0`): calibration batches split across the processes, losses
    all-reduced; the decisions (channels.json) must be identical for every process count;
  * DDP fine-tuning of the pruned model (engine.trainer, as compress.py runs it): training images per second over
    the epochs after the first, the batch loop only (no validation, no start-up).

Configurations run alternately, `--repeats` times each; medians are reported, with the speedup over the first
process count. On CPU each process gets `--threads` threads (default 1: one core per process, like one GPU each).
CPU time is reported too (the PAGCP job's, start-up and validation included; the fine-tuning loop's, summed over
the processes, per image): on a machine shared with other jobs, wall-time speedups are bounded by the cores the
scheduler grants, while equal CPU time per unit of work shows that the processes split the work without waste.

    python bench/ddp_scaling.py --weights yolov5n.pt --data coco128.yaml --img 320 --procs 1 2
    python bench/ddp_scaling.py --weights w.pt --data coco.yaml --device 0,1,2,3 --procs 1 2 4 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="model to prune (checkpoint)")
    p.add_argument("--data", default="shapes", help="dataset yaml")
    p.add_argument("--img", type=int, default=320, help="image size (pixels)")
    p.add_argument("--batch", type=int, default=16, help="total batch size (split across the processes)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (the first is not timed)")
    p.add_argument("--calib-images", type=int, default=64, help="PAGCP calibration images")
    p.add_argument("--pagcp", default="--exp --initial_rate 0.02 --initial_thres 1.5",
                   help="PAGCP flags for compress.py")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--device", default="cpu", help="cpu, or the GPUs (one per process: 0,1,2,3)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--repeats", type=int, default=1, help="alternating repeats of every configuration")
    p.add_argument("--out", default=None, help="folder for the runs and ddp_scaling.json (default: temporary)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: the fine-tuning worker's json
    return p.parse_args(argv)


def _torchrun(n: int, args: list[str], threads: int, log: Path) -> float:
    """Run a torchrun job; returns the CPU seconds (user + system) of its processes."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        raise SystemExit(f"ERROR: {' '.join(cmd[3:6])} ... failed (exit {rc}); see {log}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _devices(opt, n: int) -> str:
    return "cpu" if opt.device == "cpu" else ",".join(opt.device.split(",")[:n])


def pagcp(opt, n: int, out: Path) -> tuple[float, float, str]:
    """(seconds of the PAGCP pass, CPU seconds of the whole job, channels.json text) with n processes."""
    name = out.name
    cpu = _torchrun(n, [str(ROOT / "compress.py"), "--weights", opt.weights, "--data", opt.data, "--img", str(opt.img),
                  "--batch", str(opt.batch), "--method", "pagcp", "--calib-images", str(opt.calib_images),
                  *opt.pagcp.split(), "--epochs", "0", "--bn-recalib", "0", "--no-latency", "--workers", "0",
                  "--device", _devices(opt, n), "--project", str(out.parent), "--name", name, "--exist-ok"],
              opt.threads, out.parent / f"{name}.log")
    line = (out / "round_0" / "units.txt").read_text().splitlines()[1]
    return float(line.rsplit(", ", 1)[1].rstrip("s")), cpu, (out / "channels.json").read_text()


def finetune(opt, n: int, pruned: Path, out: Path) -> dict:
    """Training throughput of the pruned model with n processes (the worker below)."""
    result = out.with_suffix(".json")
    _torchrun(n, [__file__, "--worker", str(result), "--weights", str(pruned), "--data", opt.data, "--img",
                  str(opt.img), "--batch", str(opt.batch), "--epochs", str(opt.epochs), "--device", _devices(opt, n),
                  "--out", str(out)], opt.threads, out.parent / f"{out.name}.log")
    return json.loads(result.read_text())


def worker(opt) -> None:
    """Under torchrun: fine-tune as compress.py does, timing each epoch's batch loop on every rank (lockstep)."""
    import numpy as np
    import torch.distributed as dist

    from utils import distributed as ddp
    from engine.trainer import train

    ddp.setup(opt.device)  # the group outlives the training: the CPU times are summed over the processes after it
    times, cpu, images = [], [], []

    def start(trainer):
        trainer.bench_t0, trainer.bench_c0 = time.perf_counter(), time.process_time()

    def end(trainer):
        times.append(time.perf_counter() - trainer.bench_t0)
        cpu.append(time.process_time() - trainer.bench_c0)
        images.append(len(trainer.train_set))

    train(weights=opt.weights, data=opt.data, imgsz=opt.img, batch_size=opt.batch, epochs=opt.epochs,
          device=opt.device, workers=0, noval=True, nosave=True, hyp="finetune", progress=False, save_dir=opt.out,
          callbacks={"on_train_epoch_start": [start], "on_train_epoch_end": [end]})
    cpu = ddp.all_reduce_sum(np.array(cpu)).tolist()  # all processes' CPU seconds per epoch
    if dist.is_initialized():
        dist.destroy_process_group()
    if ddp.is_main():
        timed, timed_cpu = times[1:] or times, cpu[1:] or cpu
        Path(opt.worker).write_text(json.dumps({
            "epoch_seconds": times, "epoch_cpu_seconds": cpu, "images_per_epoch": images[0],
            "images_per_second": images[0] / statistics.median(timed),
            "cpu_ms_per_image": 1e3 * statistics.median(timed_cpu) / images[0]}))


def main(argv=None) -> None:
    opt = parse(argv)
    if opt.worker:
        return worker(opt)
    out = Path(opt.out or tempfile.mkdtemp(prefix="ddp_scaling_"))
    out.mkdir(parents=True, exist_ok=True)
    runs = {n: {"pagcp_s": [], "pagcp_cpu_s": [], "img_s": [], "cpu_ms": [], "channels": set()} for n in opt.procs}
    for r in range(opt.repeats):
        for n in opt.procs:
            secs, cpu, channels = pagcp(opt, n, out / f"pagcp_n{n}_r{r}")
            runs[n]["pagcp_s"].append(secs)
            runs[n]["pagcp_cpu_s"].append(cpu)
            runs[n]["channels"].add(channels)
            ft = finetune(opt, n, out / f"pagcp_n{n}_r{r}" / "pruned.pt", out / f"finetune_n{n}_r{r}")
            runs[n]["img_s"].append(ft["images_per_second"])
            runs[n]["cpu_ms"].append(ft["cpu_ms_per_image"])
            print(f"repeat {r + 1}/{opt.repeats}, {n} process(es): PAGCP pass {secs:.1f} s (job CPU {cpu:.0f} s), "
                  f"fine-tuning {ft['images_per_second']:.1f} img/s, {ft['cpu_ms_per_image']:.0f} CPU ms/img "
                  f"(epochs {', '.join(f'{t:.1f}' for t in ft['epoch_seconds'])} s)", flush=True)
    same = len({c for v in runs.values() for c in v["channels"]}) == 1
    base = opt.procs[0]
    rows = []
    for n in opt.procs:
        p, f = statistics.median(runs[n]["pagcp_s"]), statistics.median(runs[n]["img_s"])
        rows.append({"processes": n, "pagcp_seconds": p, "pagcp_speedup": statistics.median(runs[base]["pagcp_s"]) / p,
                     "pagcp_job_cpu_seconds": statistics.median(runs[n]["pagcp_cpu_s"]),
                     "finetune_cpu_ms_per_image": statistics.median(runs[n]["cpu_ms"]),
                     "finetune_images_per_second": f,
                     "finetune_speedup": f / statistics.median(runs[base]["img_s"]), "runs": {
                         k: v for k, v in runs[n].items() if k != "channels"}})
    print(f"\n{opt.weights} on {opt.data} at {opt.img} px, batch {opt.batch}, device {opt.device}, {opt.threads} "
          f"thread(s) per process, median of {opt.repeats}; PAGCP decisions identical for every process count: "
          f"{'yes' if same else 'NO'}")
    print("| processes | PAGCP pass (s) | speedup | PAGCP job CPU (s) | fine-tuning (img/s) | speedup | "
          "fine-tuning CPU (ms/img) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['pagcp_seconds']:.1f} | x{r['pagcp_speedup']:.2f} | "
              f"{r['pagcp_job_cpu_seconds']:.0f} | {r['finetune_images_per_second']:.1f} | x{r['finetune_speedup']:.2f} | "
              f"{r['finetune_cpu_ms_per_image']:.0f} |")
    (out / "ddp_scaling.json").write_text(json.dumps({"settings": vars(opt), "identical_decisions": same,
                                                      "rows": rows}, indent=2))
    print(f"results in {out / 'ddp_scaling.json'}")


if __name__ == "__main__":
    main()
