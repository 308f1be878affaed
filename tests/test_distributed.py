# AGPL-3.0 License
"""Issue 18: compress.py under DDP (torchrun, 2 gloo processes on CPU). PAGCP decides exactly as one process does
(its oracle's batches split across the processes, losses all-reduced), Group Fisher sums its accumulators over
the processes, only rank 0 writes, and a run killed in any rank resumes to the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

import compress


def _tiny_yaml() -> str:
    """A small detector (8 layers, 15 prunable groups): yolov5n's anchors and multiples, a short backbone."""
    cfg = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=4, head=[[[4, 5, 7], 1, "Detect", ["nc", "anchors"]]], backbone=[
        [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]],
        [-1, 1, "C3", [128]], [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "SPPF", [256, 5]]])
    return yaml.safe_dump(cfg)


TINY_YAML = _tiny_yaml()  # a trained copy's losses react to pruning: PAGCP's decisions depend on the oracle's values

# test-only hooks, loaded by every process of a torchrun job through PYTHONPATH: log each file written (with the
# writer's rank) and let one rank kill itself (SIGKILL) at a given PAGCP oracle call or fine-tuning epoch
SITECUSTOMIZE = """\
import os

if os.environ.get("YOLOC_TEST_WRITES"):
    import signal

    import utils.files as files

    real_write = files.atomic_write

    def logged_write(path, write):
        with open(os.environ["YOLOC_TEST_WRITES"], "a") as f:
            f.write(f"{os.environ.get('RANK', '-1')} {path}\\n")
        return real_write(path, write)

    files.atomic_write = logged_write
    if os.environ.get("RANK") == os.environ.get("YOLOC_TEST_KILL_RANK"):
        from prune.methods.pagcp.oracle import CalibrationOracle
        from engine.trainer import Trainer

        at_call, at_epoch = int(os.environ.get("YOLOC_TEST_KILL_CALL", 0)), int(os.environ.get("YOLOC_TEST_KILL_EPOCH", -1))
        real_call, real_callbacks = CalibrationOracle.__call__, Trainer._run_callbacks

        def oracle_call(self):
            if self.calls + 1 == at_call:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_call(self)

        def callbacks(self, event):
            if event == "on_train_epoch_start" and self.epoch == at_epoch:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_callbacks(self, event)

        CalibrationOracle.__call__, Trainer._run_callbacks = oracle_call, callbacks
"""


@pytest.fixture(scope="module")
def tiny_pt(shapes_yaml, tmp_path_factory) -> Path:
    """The tiny detector trained 4 epochs on the test shapes (a few seconds)."""
    from engine.trainer import train

    d = tmp_path_factory.mktemp("ddp_tiny")
    (d / "tiny.yaml").write_text(TINY_YAML)
    res = train(cfg=str(d / "tiny.yaml"), data=str(shapes_yaml), epochs=4, imgsz=64, batch_size=8, workers=0,
                progress=False, hyp="demo", optimizer="AdamW", noval=True, seed=0, save_dir=str(d / "run"))
    return res.best


def _pagcp_args(tiny_pt, shapes_yaml) -> list[str]:
    # 16 calibration images in 2 batches: one per process; rate 0.002 makes units trip at different ratios
    return ["--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method", "pagcp",
            "--calib-images", "16", "--ratio-step", "0.1", "--initial_rate", "0.002", "--seed", "3", "--no-latency",
            "--workers", "0", "--reference-protocol"]  # the reference pass's loss-driven trips, under DDP


@pytest.fixture(scope="module")
def single(tiny_pt, shapes_yaml, tmp_path_factory) -> Path:
    """The single-process run the DDP runs must reproduce (one thread, as each DDP process has: the same floats)."""
    project = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert compress.main([*_pagcp_args(tiny_pt, shapes_yaml), "--epochs", "0", "--project", str(project)]) == 0
    finally:
        torch.set_num_threads(threads)
    return project / "exp"


def _torchrun(script_args: list[str], tmp: Path, n: int = 2, **env_extra) -> subprocess.CompletedProcess:
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]),
           "YOLOC_TEST_WRITES": str(tmp / "writes.log"), **{k: str(v) for k, v in env_extra.items()}}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *script_args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _writers(tmp: Path) -> dict[str, set[str]]:
    """rank -> files it wrote."""
    out: dict[str, set[str]] = {}
    for line in (tmp / "writes.log").read_text().splitlines():
        r, path = line.split(" ", 1)
        out.setdefault(r, set()).add(Path(path).name)
    return out


def _structure(run: Path):
    units = json.loads((run / "round_0" / "units.json").read_text())
    return [(u["group"], u["removed"]) for u in units], json.loads((run / "channels.json").read_text())


def test_ddp_pagcp_two_gloo_processes_match_single_process(single, tiny_pt, shapes_yaml, tmp_path):
    """torchrun, 2 gloo processes: the same PAGCP decisions as one process, bit for bit (losses and ratios in
    units.json), the fine-tuning runs as DDP, and rank 0 alone writes the run folder."""
    project = tmp_path / "runs"
    p = _torchrun([str(ROOT / "compress.py"), *_pagcp_args(tiny_pt, shapes_yaml), "--epochs", "1", "--device", "cpu",
                   "--project", str(project)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(x.name for x in project.iterdir()) == ["exp"]  # one run folder, rank 0's
    run = project / "exp"
    assert (run / "round_0" / "units.json").read_bytes() == (single / "round_0" / "units.json").read_bytes()
    assert (run / "channels.json").read_text() == (single / "channels.json").read_text()
    units, _ = _structure(run)
    decisions = json.loads((run / "round_0" / "units.json").read_text())
    assert any(d["tripped_by"] for d in decisions) and any(removed for _, removed in units)  # a real, loss-driven cut
    assert len({d["ratio"] for d in decisions}) > 2

    s, ref = (json.loads((r / "summary.json").read_text()) for r in (run, single))
    assert len(s["rounds"]) == 1 and s["rounds"][0]["model"] == "weights/best.pt"  # fine-tuned
    assert s["image_forwards"] == ref["image_forwards"] and s["after"]["map50_95"] is not None
    assert "2 process(es)" in p.stdout and (run / "round_0" / "weights" / "best.pt").exists()
    assert p.stdout.count(f"Results saved to {run}:") == 1 and p.stdout.count("base:") == 1  # logs: rank 0's
    writers = _writers(tmp_path)
    assert set(writers) == {"0"}, writers  # no other rank wrote anything
    assert {"summary.json", "report.md", "units_progress.json", "pruned.pt", "best.pt"} <= writers["0"]
    summaries = [x for x in (tmp_path / "writes.log").read_text().splitlines() if x.endswith(f"{run}/summary.json")]
    assert len(summaries) == 3  # once each after the base validation, the round and the final report (rank 0)

    from models.loader import load_model
    from prune.surgery import channel_table

    assert channel_table(load_model(run / "pruned.pt")) == json.loads((run / "channels.json").read_text())


@pytest.mark.slow
def test_ddp_killed_rank_resumes_to_same_result(single, tiny_pt, shapes_yaml, tmp_path):
    """Rank 1 is killed (SIGKILL) inside the PAGCP pass, then in the second fine-tuning epoch; torchrun stops rank 0
    each time, and `compress.py --resume` under torchrun ends where the uninterrupted single-process run did."""
    project = tmp_path / "runs"
    args = [str(ROOT / "compress.py"), *_pagcp_args(tiny_pt, shapes_yaml), "--epochs", "3", "--device", "cpu",
            "--project", str(project)]
    p = _torchrun(args, tmp_path, YOLOC_TEST_KILL_RANK=1, YOLOC_TEST_KILL_CALL=20)
    run = project / "exp"
    assert p.returncode != 0
    journal = json.loads((run / "round_0" / "units_progress.json").read_text())
    done = len(journal["decisions"])
    assert 0 < done < len(_structure(single)[0]) and not (run / "round_0" / "pruned.pt").exists()

    resume = [str(ROOT / "compress.py"), "--resume", str(run), "--workers", "0", "--device", "cpu"]
    p = _torchrun(resume, tmp_path, YOLOC_TEST_KILL_RANK=1, YOLOC_TEST_KILL_EPOCH=1)
    assert p.returncode != 0 and f"{done} units replayed" in p.stdout
    from utils.checkpoint import load_checkpoint

    assert load_checkpoint(run / "round_0" / "weights" / "last.pt")["epoch"] == 0

    p = _torchrun(resume, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _structure(run) == _structure(single)
    s = json.loads((run / "summary.json").read_text())
    assert s["image_forwards"] == json.loads((single / "summary.json").read_text())["image_forwards"]
    rows = (run / "round_0" / "results.csv").read_text().splitlines()
    assert [r.split(",")[0].strip() for r in rows[1:]] == ["0", "1", "2"]  # no epoch lost or repeated
    assert set(_writers(tmp_path)) == {"0"}


def _fisher_history(cfg: str, rank: int, world: int, reduce) -> list:
    """Channels Group Fisher masks in 3 steps of 8 images, this process taking images rank, rank + world, ..."""
    from models.loader import load_model
    from prune import build_groups
    from prune.methods.fisher import GroupFisher

    torch.manual_seed(0)
    model = load_model(cfg, nc=4).eval()  # eval BN: each image's gradient is its own
    x = torch.rand(3, 8, 3, 64, 64)
    gf = GroupFisher(model, build_groups(model, imgsz=64), target_flops=0.1, interval=1, channels_per_step=2,
                     reduce=reduce).attach()
    for step in range(3):
        xi = x[step][rank::world]
        gf.before_forward(len(xi))
        out = model(xi)[1]
        sum(o.float().pow(2).mean((1, 2, 3, 4)).sum() for o in out).backward()
        gf.after_backward()
    return [list(h) for h in gf.history]


FISHER_WORKER = """\
import json, sys
sys.path[:0] = sys.argv[1:3]
from utils import distributed as ddp
from test_distributed import _fisher_history

ddp.setup("cpu")
rank, world = ddp.rank(), ddp.world_size()
out = {mode: _fisher_history(sys.argv[4], rank, world, reduce) for mode, reduce in (("reduce", ddp.all_reduce_sum), ("local", None))}
json.dump(out, open(f"{sys.argv[3]}.{rank}", "w"))
"""


def test_group_fisher_accumulators_summed_across_processes(tmp_path):
    """Two gloo processes, each with half of every batch: with the all-reduce both mask the channels one process
    masks on the whole batches; without it they do not (so the check is not vacuous)."""
    worker, cfg = tmp_path / "fisher_worker.py", tmp_path / "tiny.yaml"
    worker.write_text(FISHER_WORKER)
    cfg.write_text(TINY_YAML)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(ROOT), str(ROOT / "tests"), str(tmp_path / "out"), str(cfg)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    ref = _fisher_history(str(cfg), 0, 1, None)
    assert len(ref) == 6
    assert [r["reduce"] for r in ranks] == [ref, ref]
    assert [r["local"] for r in ranks] != [ref, ref]


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="checks the refusal on a machine without 2 GPUs")
def test_device_list_without_gpus_is_one_line(shapes_yaml, tmp_path, capsys):
    """`--device 0,1` is checked before any process is started: one line, exit 2, nothing written."""
    rc = compress.main(["--weights", "yolov5n.yaml", "--data", str(shapes_yaml), "--device", "0,1", "--project",
                        str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("ERROR: --device 0,1 requested but")
    assert not (tmp_path / "runs").exists()


def test_batch_must_split_evenly():
    from utils.distributed import check_batch
    from utils.general import UsageError

    check_batch(16, 2)
    check_batch(7, 1)
    with pytest.raises(UsageError, match="--batch-size 10 must be a multiple of the 4 processes"):
        check_batch(10, 4)
