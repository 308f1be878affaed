# AGPL-3.0 License
"""What every data format shares: image suffixes, the one-line DataConfigError, locating a data yaml,
resolving its `path` and split entries, checking its class names, and the toolkit's cache folder.

data/datasets.py (YOLO-format yamls and the loaders) and data/voc.py (Pascal VOC behind a yaml) both build on
this module; neither imports the other's internals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
IMG_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


class DataConfigError(ValueError):
    """A data yaml that cannot be used (missing keys, missing paths, no images); the message is one line."""

    def __init__(self, msg: str):
        super().__init__(" ".join(str(msg).splitlines()))  # values quoted from a yaml may hold line breaks


def cache_home() -> Path:
    """The toolkit's cache folder: $YOLOC_CACHE, else ~/.cache/yolo-compress (absolute; may not exist yet)."""
    return Path(os.environ.get("YOLOC_CACHE") or Path.home() / ".cache" / "yolo-compress").expanduser().resolve()


def find_yaml(data: str | Path) -> Path:
    """A data yaml named as a path, a file in data/, or a bare name in data/ (`coco128`); DataConfigError if none."""
    p = Path(data)
    candidates = [p, DATA_DIR / p, DATA_DIR / f"{p}.yaml"] if p.suffix not in (".yaml", ".yml") else [p, DATA_DIR / p]
    for c in candidates:
        if c.is_file():
            return c
    raise DataConfigError(f"data yaml '{data}' not found (looked in ./ and {DATA_DIR}); pass --data path/to/data.yaml")


def has_download(yaml_path: Path) -> bool:
    """True when the yaml names a `download` source (so a missing split can point at data.download)."""
    try:
        return bool((yaml.safe_load(yaml_path.read_text()) or {}).get("download"))
    except (OSError, yaml.YAMLError):
        return False


def resolve_split(root: Path, spec: Any, key: str, yaml_path: Path) -> list[str]:
    """A split entry (a path or a list of paths, relative to `root`) as absolute path strings that exist.

    Raises DataConfigError naming the first missing path (and the download command when the yaml has one)."""
    specs = spec if isinstance(spec, list) else [spec]
    out = []
    for s in specs:
        q = Path(str(s))
        q = q if q.is_absolute() else root / q
        try:
            found = q.exists()
        except (OSError, ValueError):  # a name too long or with a NUL byte is no path either
            found = False
        if not found:
            hint = f" or download it: python -m data.download {yaml_path}" if has_download(yaml_path) else ""
            raise DataConfigError(f"data yaml {yaml_path}: '{key}' path {q} does not exist; fix 'path'/'{key}'{hint}")
        out.append(str(q))
    return out


def class_index(v: Any, bad: int | None = None) -> int:
    """An integer-valued yaml scalar (2, '2', 2.0) as int; anything else raises ValueError (or returns `bad`)."""
    try:
        i = int(v)
        if isinstance(v, bool) or i != float(v):
            raise ValueError
        return i
    except (TypeError, ValueError, OverflowError):
        if bad is None:
            raise ValueError(f"not a class index: {v!r}") from None
        return bad


def check_names(d: dict, yaml_path: Path) -> dict[int, str]:
    """The yaml's `names` (a list or an {index: name} mapping) as {int: str}; DataConfigError when unusable."""
    names = d.get("names")
    if not names:
        raise DataConfigError(f"data yaml {yaml_path} has no 'names': add a list or {{index: name}} mapping of classes")
    if not isinstance(names, (list, dict)):
        raise DataConfigError(f"data yaml {yaml_path}: 'names' must be a list or an {{index: name}} mapping, "
                              f"got {names!r}")
    try:
        names = {i: str(n) for i, n in enumerate(names)} if isinstance(names, list) else \
            {class_index(k): str(v) for k, v in names.items()}
    except ValueError:
        names = None
    if names is None or sorted(names) != list(range(len(names))):
        raise DataConfigError(f"data yaml {yaml_path}: 'names' keys must be the class indices 0..{len(d['names']) - 1}")
    if "nc" in d and class_index(d["nc"], -1) != len(names):
        raise DataConfigError(f"data yaml {yaml_path}: nc={d['nc']!r} but {len(names)} names are listed")
    return names


def dataset_root(d: dict, yaml_path: Path) -> Path:
    """`path` as an absolute folder: relative to the yaml's folder, then the working directory, then
    $YOLOC_DATASETS (a folder of datasets: `$YOLOC_DATASETS/<last part of path>`)."""
    root = Path(str(d.get("path") or ""))
    if root.is_absolute():
        return root
    env = os.environ.get("YOLOC_DATASETS")
    try:
        by_yaml = (yaml_path.parent / root).resolve()
        for c in (by_yaml, Path.cwd() / root, Path(env) / root.name if env and root.name else None):
            if c is not None and c.exists():
                return c.resolve()
        return by_yaml
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, a symlink loop
        raise DataConfigError(f"data yaml {yaml_path}: 'path' {d.get('path')!r} is not a usable folder") from None


def img_files(paths: list[str]) -> list[str]:
    """Image files of split entries: folders (searched recursively), txt lists (relative to the txt) or images."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMG_SUFFIXES]
        elif p.suffix == ".txt":
            parent = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(str(f if f.is_absolute() else (parent / f).resolve()))
        elif p.suffix.lower() in IMG_SUFFIXES:
            files.append(str(p))
    return files
