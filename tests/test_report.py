# AGPL-3.0 License
"""Issue 17 items 6 and 7: compress.py's report.md, summary and plots tell the truth (times counted once, the
divisor and its rounding stated, figures readable)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import compress

# 6 convs: a whole PAGCP pass at --ratio-step 0.45 takes ~20 oracle calls (as tests/test_reliability.py's)
TINY_YAML = """\
nc: 4
depth_multiple: 0.33
width_multiple: 0.25
anchors:
  - [10,13, 16,30, 33,23]
  - [30,61, 62,45, 59,119]
  - [116,90, 156,198, 373,326]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, C3, [128]],
   [-1, 1, Conv, [256, 3, 2]],
   [-1, 1, Conv, [512, 3, 2]],
   [-1, 1, Conv, [1024, 3, 2]]]
head:
  [[[3, 4, 5], 1, Detect, [nc, anchors]]]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    f = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    f.write_text(TINY_YAML)
    return f


def _compress(args, tmp_path) -> dict:
    assert compress.main([*args, "--no-latency", "--workers", "0", "--project", str(tmp_path / "runs")]) == 0
    run = sorted((tmp_path / "runs").iterdir())[-1]
    return {"dir": run, **json.loads((run / "summary.json").read_text())}


def test_round_times_count_each_stage_once(tiny, shapes_yaml, tmp_path, monkeypatch):
    """A fake clock that only moves inside the stages: oracle 7 s, the rest of pruning 3 s, fine-tuning 20 s,
    each validation 1 s. report.md and summary.json must add them up once (pruning was counted twice before)."""
    import engine.compress
    import engine.trainer
    import prune.pagcp

    clock = [1000.0]
    monkeypatch.setattr(engine.compress, "time", SimpleNamespace(time=lambda: clock[0]))

    def advancing(fn, seconds):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            clock[0] += seconds
            return out
        return wrapped

    monkeypatch.setattr(prune.pagcp.PAGCP, "run", advancing(prune.pagcp.PAGCP.run, 7))
    monkeypatch.setattr(engine.compress, "apply_removal", advancing(engine.compress.apply_removal, 3))
    monkeypatch.setattr(engine.trainer, "train", advancing(engine.trainer.train, 20))
    monkeypatch.setattr(engine.compress.Evaluator, "__call__", advancing(engine.compress.Evaluator.__call__, 1))
    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                   "--calib-images", "4", "--ratio-step", "0.45", "--initial_rate", "0.3", "--epochs", "1",
                   "--hyp", "scratch-low", "--bn-recalib", "0"], tmp_path)
    r = s["rounds"][0]
    assert (r["oracle_seconds"], r["prune_seconds"], r["finetune_seconds"]) == (7, 10, 20)
    assert r["seconds"] == 32  # + the pruned model's and the fine-tuned model's validations
    assert (s["oracle_seconds"], s["prune_seconds"], s["finetune_seconds"], s["seconds"]) == (7, 10, 20, 32)
    assert s["run_seconds"] == 33  # + the base model's validation
    report = (s["dir"] / "report.md").read_text()
    assert ("Time: PAGCP oracle 7 s, pruning 10 s (oracle included), fine-tuning 20 s, validation and saving 2 s; "
            "32 s for 1 round; 33 s for the whole process") in report
    assert "s in all" not in report
    csv = (s["dir"] / "results.csv").read_text().splitlines()
    assert csv[0].endswith("oracle_seconds,prune_seconds,finetune_seconds,seconds") and csv[2].endswith("7.0,10.0,20.0,32.0")


def test_divisor_stated_and_far_landing_warned(tiny, shapes_yaml, tmp_path, capsys):
    """Issue 17 item 6: report.md and the final line state the divisor and how far rounding moved the FLOPs
    share from --target-flops; a share more than 0.02 away is a visible warning."""
    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method",
                   "l1", "--target-flops", "0.7", "--divisor", "16", "--epochs", "0", "--bn-recalib", "0"], tmp_path)
    out = capsys.readouterr().out
    share = s["flops_share"]
    assert s["divisor"] == 16 and s["target_flops"] == 0.7 and abs(share - 0.7) > 0.02  # tiny: 16-32 channel groups
    assert f"WARNING: round 0: conv FLOPs share {share:.3f} is {share - 0.7:+.3f} from its target 0.700" in out
    stated = (f"ivisor 16 (kept channels rounded to multiples of 16): conv FLOPs share {share:.3f} for "
              f"--target-flops 0.700 (rounding moved it {share - 0.7:+.3f})")
    assert "D" + stated in (s["dir"] / "report.md").read_text()
    last = [line for line in out.splitlines() if line.startswith("compressed: ")]
    assert len(last) == 1 and "d" + stated in last[0]


def test_speed_hint_only_when_slower():
    from engine.report import final_line, speed_hint

    summary = {"before": {"map50_95": 0.1}, "after": {"map50_95": 0.09}, "flops_ratio": 0.8, "params_ratio": 0.7,
               "divisor": 1, "latency": {"speedup": 0.83, "threads": 2}}
    hint = speed_hint(summary)
    assert hint.startswith("HINT: the pruned model is slower than the base on this CPU (x0.83)")
    assert "try --divisor 8 or --divisor 16" in hint and final_line(summary).endswith(hint)
    assert "try --divisor 16." in speed_hint({**summary, "divisor": 8})
    assert "even with --divisor 16" in speed_hint({**summary, "divisor": 16})
    for lat in ({"speedup": 1.2, "threads": 2}, {"skipped": "no onnxruntime"}, {}):
        assert speed_hint({**summary, "latency": lat}) == "" and "HINT" not in final_line({**summary, "latency": lat})


def test_fisher_refuses_a_divisor_it_would_ignore(tiny, shapes_yaml, tmp_path, capsys):
    rc = compress.main(["--weights", str(tiny), "--data", str(shapes_yaml), "--method", "fisher", "--target-flops",
                        "0.5", "--divisor", "8", "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--method fisher masks one channel at a time and does not round to --divisor" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
