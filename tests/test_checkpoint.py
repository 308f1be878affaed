# AGPL-3.0 License
"""Loading never executes code from a file; bad weights files give one clear error."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from models.loader import load_model
from utils.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint


class _Payload:
    """Pickles to a call of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _write(tmp_path, obj, name="evil.pt"):
    f = tmp_path / name
    torch.save({"model": obj, "epoch": -1}, f)
    return f


def test_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    f = _write(tmp_path, _Payload(os.system, f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(f)
    msg = str(e.value)
    assert "system" in msg and "not on the allowlist" in msg and "--trust-checkpoint" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    f = _write(tmp_path, _Payload(eval, "print('x')"))
    with pytest.raises(UnsafeCheckpointError, match="'builtins.eval'"):
        load_checkpoint(f)


def test_allowed_class_cannot_be_called(tmp_path):
    # models.yolo.Model may be *named* (checkpoints rebuild it with __new__), but calling it would run
    # its __init__ with attacker-chosen arguments, so REDUCE on it is refused.
    from models.yolo import Model

    f = _write(tmp_path, _Payload(Model, "yolov5n.yaml"))
    with pytest.raises(UnsafeCheckpointError, match="calls 'models.yolo.Model'"):
        load_checkpoint(f)


def test_plain_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    f = tmp_path / "legacy.pt"
    f.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(f)
    assert not marker.exists()


def test_trust_flag_is_an_explicit_opt_in(tmp_path):
    f = _write(tmp_path, _Payload(len, "abc"))  # harmless call, refused by default
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(f)
    assert load_checkpoint(f, trust=True)["model"] == 3


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "not found"),
        (b"", "is empty"),
        (b"PK\x03\x04garbage", "truncated or corrupt"),
        (b"this is not a checkpoint at all", "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_weights_files(tmp_path, content, match):
    f = tmp_path / "w.pt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(f)


def test_truncated_real_checkpoint(tmp_path):
    from models.yolo import Model

    f = tmp_path / "full.pt"
    torch.save({"model": Model("yolov5n.yaml")}, f)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a readable"):
        load_model(cut)


def test_state_dict_is_not_a_yolo_checkpoint(tmp_path):
    f = tmp_path / "sd.pt"
    torch.save({"conv.weight": torch.zeros(1)}, f)
    with pytest.raises(CheckpointError, match="not a YOLO checkpoint"):
        load_model(f)


def test_missing_yaml_is_clear():
    with pytest.raises(FileNotFoundError, match="model yaml 'nope.yaml' not found"):
        load_model("nope.yaml")
