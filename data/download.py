# AGPL-3.0 License
"""Dataset downloads, only when the user asks for one:

    python -m data.download data/coco128.yaml

A data yaml's `download:` is data, never code: `{urls: [...], unzip_to: DIR, unzip_to_by_file: {name: DIR}}`,
directories relative to the yaml's own folder (like its `path`). Archives (.zip, .tar, .tar.gz, .tgz) are
fetched to a temporary file, extracted, then removed; a missing network gives one clear line.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import yaml


class DownloadError(RuntimeError):
    """A requested download that could not be completed."""


def _fetch(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot download {url}: {reason} (offline? download it on a connected machine and copy it over)"
        ) from None


def _extract(archive: Path, target: Path, name: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(target, filter="data")
    else:
        raise DownloadError(f"{name} is not a zip or tar archive")


def download_dataset(data_yaml: str | Path) -> list[Path]:
    """Fetch and unpack every url of the yaml's `download:` mapping; returns the folders written to."""
    data_yaml = Path(data_yaml)
    d = yaml.safe_load(data_yaml.read_text()) or {}
    spec = d.get("download")
    if not spec:
        raise DownloadError(f"{data_yaml} has no 'download' entry: get the dataset yourself and set 'path'")
    if isinstance(spec, (list, str)):
        spec = {"urls": [spec] if isinstance(spec, str) else spec}
    if not isinstance(spec, dict) or not all(isinstance(u, str) for u in spec.get("urls", [])):
        raise DownloadError(f"{data_yaml}: 'download' must be data (urls and folders), not code")
    base = data_yaml.resolve().parent
    default = base / spec.get("unzip_to", ".")
    by_file = {k: base / v for k, v in (spec.get("unzip_to_by_file") or {}).items()}
    written = []
    for url in spec["urls"]:
        name = url.rstrip("/").split("/")[-1]
        target = by_file.get(name, default)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / name
            print(f"downloading {url} ...", flush=True)
            _fetch(url, archive)
            _extract(archive, target, name)
        written.append(target)
    return written


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m data.download path/to/data.yaml", file=sys.stderr)
        return 2
    try:
        for p in download_dataset(argv[0]):
            print(f"unpacked into {p}")
    except (DownloadError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
