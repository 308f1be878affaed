# AGPL-3.0 License
"""Issue 17 items 6 and 7: compress.py's report.md, summary and plots tell the truth (times counted once, the
divisor and its rounding stated, figures readable)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
from conftest import TINY_YAML

import compress


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
    import engine.compressor
    import engine.trainer
    import prune.methods.pagcp.method
    import prune.methods.pagcp.reference

    clock = [1000.0]
    monkeypatch.setattr(engine.compressor, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(prune.methods.pagcp.method, "time", SimpleNamespace(time=lambda: clock[0]))

    def advancing(fn, seconds):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            clock[0] += seconds
            return out
        return wrapped

    monkeypatch.setattr(prune.methods.pagcp.reference.PAGCP, "run", advancing(prune.methods.pagcp.reference.PAGCP.run, 7))
    monkeypatch.setattr(engine.compressor, "apply_removal", advancing(engine.compressor.apply_removal, 3))
    monkeypatch.setattr(engine.compressor, "train", advancing(engine.compressor.train, 20))
    monkeypatch.setattr(engine.compressor.Evaluator, "__call__", advancing(engine.compressor.Evaluator.__call__, 1))
    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8",
                   "--calib-images", "4", "--ratio-step", "0.45", "--initial_rate", "0.3", "--reference-protocol", "--epochs", "1",
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


def _fake_units(n: int) -> list[dict]:
    return [{"group": i, "producers": [f"model.{i}.conv"], "ratio": 0.2, "threshold": 0.01, "tripped_by": "box",
             "curve": [[0.1, 1.001, 1.0, 0.999], [0.2, 1.004, 1.002, 1.0], [0.3, 1.02, 1.003, 1.001]]}
            for i in range(n)]


def test_loss_curves_readable_with_134_units(tmp_path):
    """Issue 17 item 7: YOLOv9t's 134 units made one 2160x6900 image; now at most 30 panels per image, each image
    with axis labels and one legend explaining the threshold and markers."""
    from PIL import Image

    from utils.plots import LOSS_PANELS_PER_PAGE, loss_curve_figures, plot_loss_curves

    files = plot_loss_curves(_fake_units(134), ["box", "obj", "cls"], tmp_path / "loss_curves.png")
    assert [f.name for f in files] == ["loss_curves.png"] + [f"loss_curves_{i}.png" for i in range(2, 6)]
    for f in files:
        w, h = Image.open(f).size
        assert w <= 2400 and h <= 2000, (f, w, h)
    figs = list(loss_curve_figures(_fake_units(31), ["box", "obj", "cls"]))
    assert len(figs) == 2 and len(figs[0].axes) == LOSS_PANELS_PER_PAGE and len(figs[1].axes) == 1
    for fig in figs:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["box loss / base", "obj loss / base", "cls loss / base", "trip threshold 1 + thres",
                          "ratio accepted", "trial over the threshold"]
        assert fig._supxlabel.get_text().startswith("ratio tried (share of the unit's channels asked to go")
        assert fig._supylabel.get_text() == "task loss / its base (calibration set)"
        assert "units" in fig._suptitle.get_text()
    assert plot_loss_curves(_fake_units(3), ["box", "obj", "cls"], tmp_path / "loss_curves.png") == \
        [tmp_path / "loss_curves.png"] and not (tmp_path / "loss_curves_2.png").exists()  # a rerun's stale pages go


def test_rounds_png_names_rounds_as_the_console_and_hides_nothing():
    from utils.plots import rounds_figure

    base = {"map50_95": 0.08, "gflops": 0.26}
    rounds = [{"round": 0, "map50_95": 0.10, "map50_95_before_finetune": 0.075, "gflops": 0.19},
              {"round": 1, "map50_95": 0.09, "map50_95_before_finetune": 0.06, "gflops": 0.15}]
    fig = rounds_figure({"base": base, "rounds": rounds, "epochs": 5, "method": "pagcp", "weights": "w.pt"})
    top, bottom = fig.axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["base", "round 0", "round 1"]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["mAP50-95 after fine-tuning",
                                                                     "mAP50-95 right after the cut"]
    assert [t.get_text() for t in bottom.get_legend().get_texts()] == ["GFLOPs"]  # its own panel: no shared pixel
    fig = rounds_figure({"base": base, "rounds": rounds, "epochs": 0})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["mAP50-95 (no fine-tuning)"]


def test_results_png_has_validation_losses_and_no_empty_panel(tiny, shapes_yaml, tmp_path):
    from engine.train_plots import results_figure
    from engine.trainer import train

    train(cfg=str(tiny), data=str(shapes_yaml), epochs=2, imgsz=64, batch_size=8, workers=0, progress=False,
          hyp="scratch-low", save_dir=str(tmp_path / "t"), noval=True)
    rows = list(csv.DictReader(open(tmp_path / "t" / "results.csv")))
    assert [r["val/box_loss"] == "" for r in rows] == [True, False]  # --noval: only the last epoch validated
    assert all(float(rows[-1][f"val/{k}_loss"]) > 0 for k in ("box", "obj", "cls"))
    fig = results_figure(rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                      "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
    assert all(ax.lines and ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert (tmp_path / "t" / "results.png").exists()


def test_single_cls_compares_like_with_like(tiny, shapes_yaml, tmp_path, capsys):
    """--single-cls fine-tunes a 1-class head: the ratios compare the result with the base given that head (not the
    base's own multi-class head), and the change is said on its own line, in the console and in report.md."""
    import torch

    from models.loader import load_model, reset_classes
    from utils.flops import count_params

    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method", "l1",
                   "--ratio", "0.3", "--epochs", "1", "--hyp", "scratch-low", "--single-cls", "--bn-recalib", "0"],
                  tmp_path)
    out = capsys.readouterr().out
    h = s["head_change"]
    assert h["base_nc"] > 1 and h["nc"] == 1 and h["base_params"] == s["base"]["params"]
    torch.manual_seed(0)
    one = count_params(reset_classes(load_model(str(tiny), nc=h["base_nc"]), 1))
    assert s["before"]["params"] == one < s["base"]["params"]
    assert s["params_ratio"] == pytest.approx(s["after"]["params"] / one)
    assert s["flops_ratio"] == pytest.approx(s["after"]["gflops"] / s["before"]["gflops"])
    line = f"head: {h['base_nc']} -> 1 class(es) (--single-cls)"
    assert any(x.strip().startswith(line) for x in out.splitlines())
    assert line in (s["dir"] / "report.md").read_text()


def test_plan_at_the_min_channels_floor_is_warned(tiny, shapes_yaml, tmp_path, capsys):
    """A plan that cuts more than a few groups down to --min-channels says how many, whatever the method (checked
    on the Plan every method returns; here l1 at ratio 0.95), in the console and in report.md."""
    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method",
                   "l1", "--ratio", "0.95", "--epochs", "0", "--bn-recalib", "0"], tmp_path)
    out = capsys.readouterr().out
    n = s["rounds"][0]["groups_at_floor"]
    total = len(s["rounds"][0]["groups"])
    assert n > 3
    line = f"WARNING: round 0: {n} of {total} prunable groups were cut to the --min-channels floor (1 channel)"
    assert line in out and line in (s["dir"] / "report.md").read_text()
    s = _compress(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method",
                   "l1", "--ratio", "0.2", "--epochs", "0", "--bn-recalib", "0"], tmp_path)
    assert s["rounds"][0]["groups_at_floor"] == 0 and "--min-channels floor" not in capsys.readouterr().out
