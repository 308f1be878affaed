# AGPL-3.0 License
"""Checkpoint loading that never runs code from the file, and atomic checkpoint saving.

Release checkpoints (YOLOv5, YOLOv7, Ultralytics) are pickles of whole model objects, so torch's
`weights_only` unpickler cannot read them. We hand `torch.load` a restricted pickle module instead:

* every global the pickle names must be on an allowlist: exact entries (tensor rebuild helpers,
  storages, OrderedDict, set, numpy array reconstruction, ...) or a *class* from `models.*`,
  `ultralytics.*` or `torch.nn.*` that is an nn.Module (or a known plain data class);
* the only things the pickle may *call* (REDUCE / INST / OBJ opcodes) are the exact entries.
  Classes are only ever rebuilt with `cls.__new__` + `__setstate__` (NEWOBJ + BUILD), so no
  `__init__` of any class runs, and nothing like `os.system` or `builtins.eval` is reachable.

Refusal happens when the global is looked up, i.e. before it could be used.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.files import atomic_write


class CheckpointError(ValueError):
    """A weights file that cannot be read as a checkpoint (missing, empty, truncated, not a model)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that names or calls something outside the allowlist."""


# Globals that may be named *and called* while unpickling.
_CALLABLE = {
    "torch._utils": {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"},
    "torch": {"Size", "device"},
    "collections": {"OrderedDict", "defaultdict"},
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray", "list", "dict", "tuple", "float", "int"},
    "__builtin__": {"set", "frozenset", "slice", "complex", "bytearray", "list", "dict", "tuple", "float", "int"},
    "copyreg": {"_reconstructor"},
    "copy_reg": {"_reconstructor"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy": {"ndarray", "dtype"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "types": {"SimpleNamespace"},
    "argparse": {"Namespace"},
    "datetime": {"datetime", "date", "timedelta", "timezone"},
}
# Globals that may be named but only rebuilt via __new__/__setstate__ (never called).
_DATA = {
    "torch": {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
              "strided", "contiguous_format", "channels_last", "preserve_format"},
    "numpy.dtypes": None,  # any numpy dtype class (Float32DType, ...)
    "numpy": {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_"},
    "ultralytics.utils": {"IterableSimpleNamespace"},
}
# Packages whose nn.Module subclasses (and, for ultralytics, loss/assigner helpers) may be named.
_MODULE_PACKAGES = ("models.", "ultralytics.nn.", "torch.nn.modules.", "torch.nn.parameter", "torchvision.models.",
                    "torchvision.ops.")
_ULTRALYTICS_HELPERS = ("ultralytics.utils.loss", "ultralytics.utils.tal")

TRUST_HINT = "if you trust this file and its source, pass --trust-checkpoint to load it without restrictions"


def _allowed(table: dict, module: str, name: str) -> bool:
    names = table.get(module, ())
    return names is None or name in names


def _is_allowed_class(module: str, name: str) -> Any:
    """Import module.name if it is an allowed class, else return None."""
    if not (module.startswith(_MODULE_PACKAGES) or module in _ULTRALYTICS_HELPERS):
        return None
    obj = _import(module, name)
    if not isinstance(obj, type):
        return None
    if issubclass(obj, nn.Module) or module in _ULTRALYTICS_HELPERS:
        return obj
    return None


def _import(module: str, name: str) -> Any:
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as e:
        hint = (
            " (a YOLOv5/YOLOv7 block this toolkit does not implement yet)"
            if module.startswith("models.")
            else " (the installed ultralytics may be older than the one that saved it: pip install -U ultralytics)"
            if module.startswith("ultralytics.")
            else ""
        )
        raise CheckpointError(f"checkpoint uses '{module}.{name}', which cannot be imported{hint}: {e}") from None


class RestrictedUnpickler(pickle._Unpickler):  # pure-Python unpickler: its opcode table can be restricted
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module = "builtins"
        if _allowed(_CALLABLE, module, name) or _allowed(_DATA, module, name):
            return _import(module, name)
        cls = _is_allowed_class(module, name)
        if cls is not None:
            return cls
        raise UnsafeCheckpointError(
            f"refusing to load: the checkpoint names '{module}.{name}', which is not on the allowlist of "
            f"safe globals; {TRUST_HINT}"
        )

    def _check_call(self, func: Any) -> None:
        # Identity check: what the pickle calls must be one of the exact callables, never a class it named.
        if not _is_callable_allowed(func):
            module, name = getattr(func, "__module__", "?"), getattr(func, "__qualname__", repr(func))
            raise UnsafeCheckpointError(
                f"refusing to load: the checkpoint calls '{module}.{name}' while unpickling, which is not "
                f"allowed; {TRUST_HINT}"
            )

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_call(func)
        stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_inst(self):
        raise UnsafeCheckpointError(f"refusing to load: the checkpoint uses the INST opcode; {TRUST_HINT}")

    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_inst


def _callable_objects() -> set:
    objs = set()
    for module, names in _CALLABLE.items():
        if module in ("__builtin__", "copy_reg"):
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for n in names:
            if hasattr(mod, n):
                objs.add(getattr(mod, n))
    return objs


_CALLABLE_OBJECTS = _callable_objects()


def _is_callable_allowed(func: Any) -> bool:
    try:
        return func in _CALLABLE_OBJECTS
    except TypeError:  # unhashable
        return False


class _RestrictedPickleModule:
    """The `pickle_module` handed to torch.load: only its Unpickler is used."""

    __name__ = "yolo_compress_restricted_pickle"
    Unpickler = RestrictedUnpickler
    load = staticmethod(lambda f, **kw: RestrictedUnpickler(f, **kw).load())


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"weights file '{path}' not found: check the path passed to --weights")
    if path.is_dir():
        raise CheckpointError(f"weights path '{path}' is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"weights file '{path}' is empty (0 bytes): re-download or re-export it")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"weights file '{path}' is truncated or corrupt (broken zip archive): re-download it")


def load_checkpoint(path: str | Path, trust: bool = False, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch checkpoint without executing code from it (see module docstring).

    trust=True is the explicit opt-in for a file the user knowingly trusts: plain pickle semantics.
    """
    path = Path(path)
    _check_file(path)
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        # weights_only=False is required to use a custom pickle_module; ours is the restricted one above.
        return torch.load(path, map_location=map_location, pickle_module=_RestrictedPickleModule, weights_only=False)
    except CheckpointError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # garbage bytes surface as any exception from the pure-Python unpickler
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg}); is the file complete?") from None


def save_checkpoint(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, then rename: readers never see a partial file, and
    a full disk is one clear error (utils.files.DiskFullError) that leaves the previous file intact."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def training_lr0(ckpt) -> float | None:
    """The lr0 a checkpoint's base model was trained with: compress.py's pruning record (base_lr0), ultralytics'
    train_args, or the hyp a YOLOv5-style trainer saved (this project's 'hyp', YOLOv5's opt['hyp']); None when
    unknown or when the checkpoint is itself a fine-tune of a pruned model (its hyp is the fine-tune's)."""
    if not isinstance(ckpt, dict):
        return None
    rec = ckpt.get("pruning")
    if isinstance(rec, dict):
        return rec.get("base_lr0")
    for hyp in (ckpt.get("train_args"), ckpt.get("hyp"), (ckpt.get("opt") or {}).get("hyp")
                if isinstance(ckpt.get("opt"), dict) else None):
        if isinstance(hyp, dict) and isinstance(hyp.get("lr0"), (int, float)):
            if isinstance(ckpt.get("opt"), dict) and ckpt["opt"].get("schedule") == "steps":
                return None  # a fine-tune of a pruned model: its lr0 is already the fine-tune's
            return float(hyp["lr0"])
    return None
