# AGPL-3.0 License
"""Issue 8: a bad input is one clear line (exit 2) and writes nothing; interrupted work resumes to the same
result; the same seed gives the same pruning. Tiny models and the built-in shapes data keep this fast."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY_YAML
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compress
import export
from prune.methods.pagcp.journal import Journal
import train
import val

QUIET = ["--epochs", "0", "--no-latency", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    f.write_text(TINY_YAML)
    return f


@pytest.fixture(scope="module")
def tiny_pt(tiny, tmp_path_factory) -> Path:
    from models.loader import load_model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint({"model": load_model(tiny, nc=4)}, tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture(autouse=True)
def _ultralytics_log_stream():
    """ultralytics' log handler keeps the stdout it was imported under (maybe an earlier test's closed capture),
    and logging's complaints about that would land in stderr: point it at the process's stdout meanwhile."""
    import logging

    from ultralytics.utils import LOGGER as UL

    handlers = [h for h in UL.handlers if type(h) is logging.StreamHandler]  # not pytest's own capture handlers
    saved = [h.stream for h in handlers]
    for h in handlers:
        h.stream = sys.__stdout__  # not setStream(): it flushes the old stream, which may be closed already
    yield
    for h, s in zip(handlers, saved):
        h.stream = s


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """compress.py's figures are not what these tests check, and drawing them takes seconds."""
    import engine.compressor
    import prune.methods.pagcp.method

    for name in ("plot_channels", "plot_rounds"):
        monkeypatch.setattr(engine.compressor, name, lambda *a, **k: None)
    monkeypatch.setattr(prune.methods.pagcp.method, "plot_loss_curves", lambda *a, **k: None)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ---------------------------------------------------------------- bad weights, every entry point
class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _bad_weights(kind: str, folder: Path) -> Path:
    f = folder / f"{kind}.pt"
    if kind == "empty":
        f.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": torch.nn.Conv2d(3, 4, 3)}, f)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "corrupt":
        f.write_bytes(b"\x80\x04garbage that is no pickle at all")
    elif kind == "not_yolo":
        torch.save({"conv.weight": torch.zeros(1)}, f)
    elif kind == "malicious":
        torch.save({"model": _Payload(os.system, f"touch {folder / 'pwned'}")}, f)
    return f


BAD_WEIGHTS = {
    "missing": "not found: check the path passed to --weights",
    "empty": "is empty (0 bytes)",
    "truncated": "truncated or corrupt",
    "corrupt": "not a readable PyTorch checkpoint",
    "not_yolo": "not a YOLO checkpoint",
    "malicious": "refusing to load: the checkpoint names 'posix.system', which is not on the allowlist",
}


@pytest.mark.parametrize("kind", list(BAD_WEIGHTS))
def test_bad_weights_every_script(kind, shapes_yaml, tmp_path, capsys):
    """Each script: exit 2, one line naming the problem, no run folder, the file untouched, no code run."""
    wdir = tmp_path / "w"
    wdir.mkdir()
    w = _bad_weights(kind, wdir)
    before = _sha(w) if w.exists() else None
    d, runs = str(shapes_yaml), tmp_path / "runs"
    argv = {
        compress: ["--weights", str(w), "--data", d, "--img", "64", "--method", "l1", "--ratio", "0.3", *QUIET],
        train: ["--weights", str(w), "--data", d, "--img", "64", "--epochs", "1", "--workers", "0"],
        val: ["--weights", str(w), "--data", d, "--img", "64", "--workers", "0"],
        export: ["--weights", str(w), "--imgsz", "64", "--include", "torchscript"],
    }
    for script, args in argv.items():
        rc = script.main([*args, "--project", str(runs / script.__name__)])
        err = _one_line(capsys)
        assert rc == 2 and err.startswith("ERROR: ") and BAD_WEIGHTS[kind] in err, (script.__name__, err)
    assert not runs.exists()  # nothing written
    assert _files(wdir) == ({w.name} if before else set())  # no export next to it, no 'pwned' marker
    assert before is None or _sha(w) == before


# ---------------------------------------------------------------- bad data yamls and label files
def _dataset(root: Path, shapes_yaml: Path, labels: dict[int, str] | None = None, n: int = 3) -> Path:
    """n shapes images in root/images, their labels (or the given label texts), and a data yaml."""
    src = Path(yaml.safe_load(shapes_yaml.read_text())["path"])
    imgs = sorted((src / "images" / "val").glob("*"))[:n]
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, im in enumerate(imgs):
        shutil.copy(im, root / "images" / im.name)
        lab = src / "labels" / "val" / f"{im.stem}.txt"
        text = labels[i] if labels and i in labels else (lab.read_text() if lab.exists() else "")
        (root / "labels" / f"{im.stem}.txt").write_text(text)
    y = root / "data.yaml"
    y.write_text(f"path: {root}\ntrain: images\nval: images\nnames: [circle, square, triangle, cross]\n")
    return y


@pytest.mark.parametrize("content, message", [
    ("path: {root}\ntrain: images\nnames: [a, b, c, d]\n", "has no 'val' entry"),
    ("path: {root}\ntrain: images\nval: empty\nnames: [a, b, c, d]\n", "'val' has no images under"),
    ("path: {root}\ntrain: images\nval: nowhere\nnames: [a, b, c, d]\n", "'val' path"),
    ("path: {root}\ntrain: images\nval: images\nnames: 4\n", "'names' must be a list"),
    ("path: {root}\ntrain: images\nval: images\nnames: {{0: a, x: b}}\n", "'names' keys must be the class indices"),
    ("path: {root}\ntrain: images\nval: images\nnames: [a, b]\nnc: two\n", "nc='two' but 2 names"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_bad_data_yaml(content, message, shapes_yaml, tmp_path, capsys):
    root = tmp_path / "ds"
    y = _dataset(root, shapes_yaml)
    (root / "empty").mkdir()
    y.write_text(content.format(root=root))
    runs = tmp_path / "runs"
    rc = compress.main(["--weights", "yolov5n.yaml", "--data", str(y), "--method", "l1", "--ratio", "0.3",
                        "--project", str(runs), *QUIET])
    err = _one_line(capsys)
    assert rc == 2 and message in err and not runs.exists()


@pytest.mark.parametrize("label, why", [
    ("7 0.5 0.5 0.2 0.2", "class id >= nc"),
    ("0 nan 0.5 0.2 0.2", "NaN"),
    ("1 0.5 1.7 0.2 0.2", "coordinate out of range"),
    ("2 0.5 0.5 -0.3 0.2", "negative size"),
    ("0 0.5 0.5 0.2", "4 columns"),
    ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5", "ragged rows"),
    ("zero 0.5 0.5 0.2 0.2", "not a number"),
])
def test_corrupt_label_is_skipped_and_counted(label, why, shapes_yaml, tmp_path, capsys):
    from data.datasets import build_val_loader, check_dataset

    data = check_dataset(_dataset(tmp_path / "ds", shapes_yaml, labels={1: label}))
    ds = build_val_loader(data, "val", 64, 4, 32, workers=0).dataset
    assert ds.n_corrupt == 1 and len(ds.labels) == 2, why
    assert all(lb["cls"].max(initial=0) < 4 for lb in ds.labels)
    assert "skipped 1 of 3 images whose labels are corrupt" in capsys.readouterr().out


def test_all_labels_corrupt_is_one_line(tiny, shapes_yaml, tmp_path, capsys):
    """No usable image left: val.py and train.py stop with one line naming the first problem."""
    y = _dataset(tmp_path / "ds", shapes_yaml, labels={i: "9 0.5 0.5 0.1 0.1" for i in range(3)})
    assert val.main(["--weights", str(tiny), "--data", str(y), "--img", "64", "--project", str(tmp_path / "v")]) == 2
    err = _one_line(capsys)
    assert "no usable image/label pair" in err and "Label class 9 exceeds dataset class count 4" in err
    runs = tmp_path / "t"
    assert train.main(["--cfg", str(tiny), "--data", str(y), "--img", "64", "--epochs", "1", "--workers", "0",
                       "--project", str(runs)]) == 2
    assert "'train': no usable image/label pair" in _one_line(capsys)
    assert not runs.exists()  # (val.py creates its folder before it reads the labels)


_token = st.one_of(
    st.integers(-2, 9).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e9", "0.5", "abc", "0x10", "1,2", "\u00e9"]),
    st.text(alphabet="0123456789.-+eE", max_size=6),
)
_label_file = st.lists(st.lists(_token, max_size=7).map(" ".join), max_size=4).map("\n".join)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_label_file)
def test_fuzz_label_files(text, shapes_yaml):
    """Any label text: a dataset with only valid labels, or one clear DataConfigError line; never a crash."""
    from data.datasets import DataConfigError, build_val_loader, check_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = check_dataset(_dataset(Path(tmp) / "ds", shapes_yaml, labels={0: text}, n=1))
        try:
            ds = build_val_loader(data, "val", 64, 1, 32, workers=0).dataset
        except DataConfigError as e:
            assert len(str(e).splitlines()) == 1 and "no usable image/label pair" in str(e)
            return
        assert ds.n_corrupt == 0 and len(ds.labels) == 1
        lb = ds.labels[0]
        assert lb["cls"].max(initial=0) < 4 and torch.isfinite(torch.as_tensor(lb["bboxes"])).all()


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True),
                    st.text(alphabet="abc xyz_-:\n\r\t\u00e9\u2028", max_size=8))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=4), st.dictionaries(_scalar, _scalar, max_size=4),
                   st.just("images"), st.just(["images", "images"]))
_yaml_dict = st.dictionaries(st.sampled_from(["path", "train", "val", "names", "nc", "download", "test"]), _value)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(d=_yaml_dict, raw=st.one_of(st.none(), st.text(max_size=40)))
def test_fuzz_data_yaml(d, raw, shapes_yaml, tmp_path_factory):
    """Any yaml mapping (or any text): a usable dataset dict, or one clear DataConfigError line."""
    from data.datasets import DataConfigError, check_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _dataset(root / "ds", shapes_yaml, n=1)
        y = root / "ds" / "fuzz.yaml"
        y.write_text(raw if raw is not None else yaml.safe_dump(d, allow_unicode=True, sort_keys=False))
        try:
            out = check_dataset(str(y))
        except DataConfigError as e:
            assert len(str(e).splitlines()) == 1
            return
        assert out["nc"] == len(out["names"]) > 0 and out["val"] and all(Path(p).exists() for p in out["val"])


# ---------------------------------------------------------------- invalid flags
@pytest.mark.parametrize("extra, message", [
    (["--method", "l1", "--ratio", "1.0"], "--ratio must be in (0, 1), got 1.0 (1 would empty every layer)"),
    (["--method", "l1", "--ratio", "0"], "--ratio must be in (0, 1), got 0.0"),
    (["--method", "l1", "--target-flops", "1.5"], "--target-flops must be in (0, 1), got 1.5"),
    (["--criterion", "0", "--pruning-params", "[(3, 1.0)]"], "rates must be in (0, 1) (a rate of 1 would empty the layer)"),
    (["--method", "pagcp", "--initial_thres", "1"], "--initial_thres must be > 1"),
    (["--method", "pagcp", "--initial_rate", "0"], "--initial_rate must be in (0, 1), got 0.0"),
    (["--method", "pagcp", "--topk", "1.5"], "--topk must be in (0, 1], got 1.5"),
    (["--method", "pagcp", "--epochs", "-1"], "--epochs must be >= 0, got -1"),
    (["--method", "pagcp", "--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--method", "l1", "--ratio", "0.3", "--min-channels", "0"], "--divisor and --min-channels must be >= 1"),
    (["--method", "l1", "--ratio", "0.3", "--device", "99"], "--device 99 requested but this machine has"),
    (["--method", "l1", "--ratio", "0.3", "--resume", "nowhere"], "--resume nowhere: not a compression run folder"),
    (["--method", "l1", "--ratio", "0.3", "--ignore", "model.9"], "--ignore 'model.9' matches no prunable layer"),
    (["--method", "pagcp", "--ignore", "model.0", "model.99.*"], "--ignore 'model.99.*' matches no prunable layer"),
    (["--method", "l1", "--target-flops", "0.01", "--min-channels", "8"],
     "--target-flops 0.01 keeps under 0.1 of the base FLOPs"),  # the sanity floor speaks first
    (["--method", "l1", "--target-flops", "0.01", "--min-channels", "8", "--force"],
     "--target-flops 0.01 cannot be reached: keeping --min-channels 8 (--divisor 1) per group leaves at least"),
])
def test_compress_bad_flags(extra, message, tiny, shapes_yaml, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = compress.main(["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", *QUIET, *extra,
                        "--project", str(tmp_path / "runs")])
    err = _one_line(capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_device_that_does_not_exist_export(capsys, tmp_path):
    rc = export.main(["--weights", "yolov5n.yaml", "--device", "99", "--project", str(tmp_path / "runs")])
    assert rc == 2 and "--device 99 requested but this machine has" in _one_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_unreachable_fisher_target_is_refused(tiny):
    from models.loader import load_model
    from prune import build_groups
    from prune.methods.fisher import GroupFisher

    model = load_model(tiny, nc=4)
    with pytest.raises(ValueError, match=r"--target-flops 0.010 cannot be reached: keeping 8 channel\(s\) per group"):
        GroupFisher(model, build_groups(model, imgsz=64), target_flops=0.01, min_keep=8)


# ---------------------------------------------------------------- out of disk space
def _full_disk(monkeypatch, after: int = 0):
    """Writes through utils.files fail with ENOSPC once `after` bytes went to the file."""
    import utils.files

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(utils.files, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)


@pytest.mark.parametrize("after", [0, 3000])
def test_disk_full_keeps_previous_checkpoint(after, tmp_path, monkeypatch):
    from utils.checkpoint import load_checkpoint, save_checkpoint
    from utils.files import DiskFullError, write_json

    f = save_checkpoint({"model": torch.nn.Conv2d(3, 8, 3)}, tmp_path / "last.pt")
    j = write_json({"rounds": 1}, tmp_path / "summary.json")
    old, old_j = _sha(f), _sha(j)
    _full_disk(monkeypatch, after)
    with pytest.raises(DiskFullError, match="no space left on device while saving .*last.pt "
                                            r"\(the previous last.pt is unchanged\)") as e:
        save_checkpoint({"model": torch.nn.Conv2d(3, 64, 3)}, f)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    with pytest.raises(DiskFullError, match="summary.json"):
        write_json({"rounds": 2, "pad": "x" * 5000}, j)
    assert _sha(f) == old and _sha(j) == old_j and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt",
                                                                                                   "summary.json"]
    monkeypatch.undo()
    assert load_checkpoint(f)["model"].out_channels == 8


def test_disk_full_is_one_line_in_the_clis(tiny_pt, shapes_yaml, tmp_path, capsys, monkeypatch):
    _full_disk(monkeypatch)
    rc = compress.main(["--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64", "--method", "l1",
                        "--ratio", "0.3", *QUIET, "--project", str(tmp_path / "c")])
    assert rc == 2 and "no space left on device while saving" in _one_line(capsys)
    rc = val.main(["--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64", "--workers", "0",
                   "--no-progress", "--project", str(tmp_path / "v")])
    err = _one_line(capsys)
    assert rc == 2 and "metrics.json (metrics.json was not written)" in err


# ---------------------------------------------------------------- nothing lost: weights, run folders
def test_run_folders_increment_input_weights_untouched(tiny, tiny_pt, shapes_yaml, tmp_path):
    """compress, export, train: exp, exp2, ...; --exist-ok reuses a folder (compress: never another run's pruned
    model); the input weights are never modified (train.py: test_train_killed_and_resumed; val.py: test_val.py)."""
    before = _sha(tiny_pt)
    common = ["--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64", "--method", "l1", *QUIET,
              "--project", str(tmp_path / "c")]
    assert compress.main([*common, "--ratio", "0.2"]) == 0
    assert compress.main([*common, "--ratio", "0.2"]) == 0
    assert compress.main([*common, "--ratio", "0.6", "--exist-ok"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["exp", "exp2"]
    params = [json.loads((tmp_path / "c" / e / "summary.json").read_text())["after"]["params"] for e in ("exp", "exp2")]
    assert params[0] < params[1]  # exp was pruned again at 0.6, not reused from the 0.2 run
    assert _sha(tiny_pt) == before and _files(tiny_pt.parent) == {tiny_pt.name}
    for _ in range(2):
        export.run(weights=str(tiny), include=["torchscript"], imgsz=64, check=False, project=str(tmp_path / "e"))
    for extra in ([], [], ["--exist-ok"]):
        assert train.main(["--cfg", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--epochs", "0", "--workers",
                           "0", "--project", str(tmp_path / "t"), *extra]) == 0
    for folder in ("e", "t"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["exp", "exp2"], folder


# ---------------------------------------------------------------- PAGCP: same seed, kill and resume
def _pagcp_args(tiny, shapes_yaml) -> list[str]:
    return ["--weights", str(tiny), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method", "pagcp",
            "--calib-images", "4", "--ratio-step", "0.45", "--initial_rate", "0.3", "--reference-protocol", "--bn-recalib", "0", "--seed", "3",
            *QUIET]


def _structure(run: Path) -> tuple:
    units = json.loads((run / "round_0" / "units.json").read_text())
    return [(u["group"], u["removed"]) for u in units], json.loads((run / "channels.json").read_text())


@pytest.fixture(scope="module")
def pagcp_ref(tiny, shapes_yaml, tmp_path_factory) -> Path:
    """An uninterrupted PAGCP run."""
    project = tmp_path_factory.mktemp("pagcp_ref")
    assert compress.main([*_pagcp_args(tiny, shapes_yaml), "--project", str(project)]) == 0
    return project / "exp"


def test_pagcp_same_seed_same_structure(pagcp_ref, tiny, shapes_yaml, tmp_path):
    assert compress.main([*_pagcp_args(tiny, shapes_yaml), "--project", str(tmp_path)]) == 0
    units, channels = _structure(tmp_path / "exp")
    assert (units, channels) == _structure(pagcp_ref)
    assert any(removed for _, removed in units)  # the comparison is about a real cut


def test_pagcp_killed_mid_round_resumes_to_same_structure(pagcp_ref, tiny, shapes_yaml, tmp_path, monkeypatch):
    """Interrupted inside the pass (after a few units): a plain --resume replays the finished units without
    oracle calls, continues from the next one and ends exactly where the uninterrupted run did."""
    from prune.methods.pagcp.oracle import CalibrationOracle

    real = CalibrationOracle.__call__
    calls = []

    def counted(self):
        calls.append(1)
        if kill_at and len(calls) == kill_at:
            raise KeyboardInterrupt()
        return real(self)

    monkeypatch.setattr(CalibrationOracle, "__call__", counted)
    kill_at = 9
    assert compress.main([*_pagcp_args(tiny, shapes_yaml), "--project", str(tmp_path)]) == 130
    run = tmp_path / "exp"
    journal = json.loads((run / "round_0" / "units_progress.json").read_text())
    done = len(journal["decisions"])
    assert 0 < done < 9 and not (run / "round_0" / "pruned.pt").exists()

    kill_at, calls[:] = 0, []
    assert compress.main(["--resume", str(run), "--workers", "0"]) == 0  # options come from the run's opt.json
    assert _structure(run) == _structure(pagcp_ref)
    ref = json.loads((pagcp_ref / "summary.json").read_text())
    out = json.loads((run / "summary.json").read_text())
    assert out["image_forwards"] == ref["image_forwards"]  # the calls before the kill are counted once
    assert len(calls) == ref["image_forwards"] // 4 - journal["oracle_calls"] + 1  # finished units not redone


def test_pagcp_journal_replays_trips_and_refuses_another_pass(tiny, tmp_path):
    """Unit level, with an oracle whose losses grow with the channels masked (so units trip, thresholds decay
    and the cumulative guard stops the pass): killed at any oracle call, the resumed pass makes exactly the
    uninterrupted pass's decisions. A journal is only replayed into the pass that wrote it."""
    from dataclasses import asdict

    import numpy as np

    from models.loader import load_model
    from prune import build_groups
    from prune.methods.pagcp.reference import PAGCP, PAGCPConfig

    model = load_model(tiny, nc=4)
    groups = build_groups(model, imgsz=64)

    def run(journal, kill_at=0, cfg=None, scale=1.0):
        calls = []

        def oracle():
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt()
            v = policy.masks.values
            r, r0 = 1 - float(v.mean()), 1 - float(v[:40].mean())  # all channels, the first layers' channels
            return scale * np.array([1 + 2 * r, 1 + 0.5 * r + 2 * r0, 1 + r**2])

        policy = PAGCP(model, groups, oracle, ["box", "obj", "cls"], cfg or PAGCPConfig(0.1, 1.25, step=0.1),
                       progress=False, journal=journal and Journal(journal))
        removed, decisions = policy.run()
        return removed, [asdict(d) for d in decisions], len(calls)

    ref_removed, ref, n_calls = run(None)
    # units tripped by two tasks, one that never trips, and the cumulative guard stopping the pass
    assert {d["tripped_by"] for d in ref} == {"box", "obj", ""} and any(d["trials"] == 0 for d in ref)
    for kill_at in (2, n_calls // 2, n_calls - 1):
        journal = tmp_path / f"units_progress_{kill_at}.json"
        with pytest.raises(KeyboardInterrupt):
            run(journal, kill_at)
        spent = json.loads(journal.read_text())["oracle_calls"] if journal.exists() else 1  # by finished units
        removed, decisions, calls = run(journal)
        assert removed == ref_removed and decisions == ref
        assert calls == n_calls - spent + 1  # finished units are replayed, not searched again

    with pytest.raises(ValueError, match="written by a PAGCP pass with other settings or another model; resume "
                                         "with the same flags, or delete it"):
        run(journal, cfg=PAGCPConfig(0.1, 1.25, step=0.2))
    with pytest.raises(ValueError, match="the unpruned losses differ from this model's"):
        run(journal, scale=2.0)


# ---------------------------------------------------------------- train.py killed (SIGKILL) and resumed
def test_train_killed_and_resumed(tiny_pt, shapes_yaml, tmp_path):
    """A real kill -9 after the first epoch's checkpoint; --resume finishes the run, no epoch lost or repeated,
    the input weights untouched."""
    before = _sha(tiny_pt)
    cmd = [sys.executable, str(ROOT / "train.py"), "--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64",
           "--batch", "8", "--epochs", "3", "--workers", "0", "--project", str(tmp_path), "--hyp", "scratch-low"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "exp" / "weights" / "last.pt"
    try:
        deadline = time.time() + 300
        while not last.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    from utils.checkpoint import load_checkpoint

    if p.returncode == 0 or load_checkpoint(last)["epoch"] >= 2:
        pytest.skip("training finished before it could be killed")
    assert p.returncode == -signal.SIGKILL
    assert train.main(["--resume", str(last), "--workers", "0"]) == 0
    rows = (tmp_path / "exp" / "results.csv").read_text().splitlines()
    assert [r.split(",")[0].strip() for r in rows[1:]] == ["0", "1", "2"]
    assert _sha(tiny_pt) == before and _files(tiny_pt.parent) == {tiny_pt.name}


# ---------------------------------------------------------------- SIGTERM behaves like Ctrl-C
def _terminate_when(cmd: list[str], ready, timeout: float = 300) -> tuple[int, str]:
    """Run cmd, send SIGTERM once ready() is true; (return code, stderr). Skips if it finished first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not ready() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if p.poll() is not None:
            pytest.skip("the command finished before it could be terminated")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err


def test_compress_sigterm_says_how_to_resume_and_resumes(tiny_pt, shapes_yaml, tmp_path):
    args = ["--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64", "--batch", "8", "--method", "l1",
            "--ratio", "0.3", "--epochs", "3", "--hyp", "scratch-low", "--no-latency", "--workers", "0",
            "--project", str(tmp_path)]
    run = tmp_path / "exp"
    rc, err = _terminate_when([sys.executable, str(ROOT / "compress.py"), *args],
                              lambda: (run / "round_0" / "weights" / "last.pt").exists())
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == f"terminated (SIGTERM): continue with python compress.py --resume {run}"
    assert compress.main(["--resume", str(run), "--no-latency", "--workers", "0"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert len(s["rounds"]) == 1 and (run / "pruned.pt").exists()
    epochs = [r.split(",")[0] for r in (run / "round_0" / "results.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]  # none lost, none repeated


def test_train_sigterm_says_how_to_resume(tiny_pt, shapes_yaml, tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img",
           "64", "--batch", "8", "--epochs", "3", "--workers", "0", "--project", str(tmp_path), "--hyp", "scratch-low"]
    last = tmp_path / "exp" / "weights" / "last.pt"
    rc, err = _terminate_when(cmd, last.exists)
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == f"terminated (SIGTERM): continue with python train.py --resume {last}"
    assert train.main(["--resume", str(last), "--workers", "0"]) == 0


def test_val_sensitivity_sigterm_keeps_finished_layers(tiny_pt, shapes_yaml, tmp_path):
    args = ["--task", "sensitivity", "--weights", str(tiny_pt), "--data", str(shapes_yaml), "--img", "64",
            "--batch", "8", "--workers", "0", "--pruning-rate", "[0.25,0.5,0.75]", "--project", str(tmp_path),
            "--no-progress"]
    first = tmp_path / "exp" / "output_0.25.txt"
    rc, err = _terminate_when([sys.executable, str(ROOT / "val.py"), *args],
                              lambda: first.exists() and first.read_text().count("\n") >= 1)
    assert rc == 143, err
    assert "terminated (SIGTERM): the analysis keeps every finished layer: continue with the same command and " \
           "--resume" in err
    done = first.read_text().count("\n")
    assert val.main([*args, "--resume"]) == 0
    assert first.read_text().count("\n") >= done and (tmp_path / "exp" / "sensitivity.csv").exists()
