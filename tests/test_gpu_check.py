# AGPL-3.0 License
"""bench/gpu_check.sh: one line per check; on CPU (--fast, as CI runs it) the CUDA-only checks are skipped with a
note and everything else passes; a missing CUDA device is one failed line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"
CHECKS = {"cuda": "skipped", "train-amp": "ok", "pagcp-oracle": "ok", "finetune-amp": "ok", "prefix-cache-cap": "ok",
          "val-half": "skipped", "speed": "ok", "speed-cuda": "skipped", "tensorrt": "skipped", "export-half": "skipped",
          "engine": "skipped", "total": "ok"}


def _run(*args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLOC_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(tmp_path / "out"), "--python", sys.executable],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def _lines(stdout: str) -> dict[str, str]:
    """check -> status, from the script's 'status: check...' lines (header lines start with '#')."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("#"):
            continue
        status, check = line.split(": ", 1)
        assert status in ("ok", "failed", "skipped"), line
        out[check.split(" ")[0].rstrip(":")] = status
    return out


@pytest.mark.slow
def test_gpu_check_on_cpu_fast(tmp_path):
    p = _run("--device", "cpu", "--fast", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert _lines(p.stdout) == CHECKS, p.stdout
    assert "AMP off" in p.stdout and "CUDA-only" in p.stdout
    assert (tmp_path / "out" / "logs" / "pagcp.log").exists()  # every step's log is kept for a failure's details


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report on a machine without CUDA")
def test_gpu_check_without_cuda_is_one_failed_line(tmp_path):
    p = _run("--device", "0", tmp_path=tmp_path)
    assert p.returncode == 1
    lines = [x for x in p.stdout.splitlines() if not x.startswith("#")]
    assert lines == [lines[0]] and lines[0].startswith("failed: cuda: --device 0: ") and "CUDA" in lines[0]


def test_gpu_check_unknown_option(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), "--nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("ERROR: unknown option '--nope'")
