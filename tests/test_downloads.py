# AGPL-3.0 License
"""Downloads happen only on request, unpack where the yaml's path points, and fail in one line offline."""

from __future__ import annotations

import zipfile

import pytest

from data.datasets import DataConfigError, check_dataset
from data.download import DownloadError, download_dataset, main


def _yaml(tmp_path, download: str) -> object:
    y = tmp_path / "cfg" / "tiny.yaml"
    y.parent.mkdir(parents=True, exist_ok=True)
    y.write_text(f"path: ../datasets/tiny\ntrain: images\nval: images\nnames: [a]\n{download}")
    return y


def test_download_unpacks_next_to_the_yaml_path(tmp_path, shapes_yaml):
    src = next((shapes_yaml.parent / "images" / "val").glob("*.png"))
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(src, "tiny/images/0.png")
        z.writestr("tiny/labels/0.txt", "0 0.5 0.5 0.2 0.2\n")
    y = _yaml(tmp_path, f"download:\n  urls: [{archive.as_uri()}]\n  unzip_to: ../datasets\n")
    with pytest.raises(DataConfigError, match="python -m data.download"):
        check_dataset(str(y))  # nothing is fetched unless asked
    assert main([str(y)]) == 0
    d = check_dataset(str(y))
    assert d["path"] == str((tmp_path / "datasets" / "tiny").resolve())


def test_offline_is_one_clear_line(tmp_path, capsys):
    y = _yaml(tmp_path, "download:\n  urls: [http://127.0.0.1:9/tiny.zip]\n")
    assert main([str(y)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: cannot download http://127.0.0.1:9/tiny.zip") and len(err.splitlines()) == 1


def test_download_must_be_data(tmp_path):
    with pytest.raises(DownloadError, match="no 'download' entry"):
        download_dataset(_yaml(tmp_path, ""))
    with pytest.raises(DownloadError, match="must be data"):
        download_dataset(_yaml(tmp_path, "download:\n  urls: [{python: 'import os'}]\n"))
