# AGPL-3.0 License
"""Pascal VOC XML datasets behind an ordinary data yaml: converted once to YOLO labels in a cache mirror.

A data yaml with a `voc:` block describes a VOC-layout dataset::

    path: ../datasets/raccoon_voc   # dataset root (relative to this yaml, the working directory or $YOLOC_DATASETS)
    voc:
      images: images                # image folder, default JPEGImages
      annotations: annotations      # XML folder, default Annotations
      difficult: drop               # drop (default) | keep
    train: train.txt                # a txt of image ids (VOC ImageSets) or image paths, an image folder, or a list
    val: val.txt
    names: [raccoon]                # optional: without it the class names are collected from the XML (sorted)

Where the folders are looked up: from each split entry upwards to `path`, the first folder holding the
`annotations` folder is that entry's base (so `VOC2007/ImageSets/Main/train.txt` finds `VOC2007/Annotations` and
`VOC2007/JPEGImages`); else `path`. An image's XML is `<base>/<annotations>/<stem>.xml`, or `<stem>.xml` next to the
image (labelImg's layout). An image without XML is a background image (no objects), as an image without a YOLO
label file is.

Conversion (the VOC devkit's conventions, as YOLOv5's and ultralytics' VOC converters apply them): VOC pixel
coordinates are 1-based, so a box spans [xmin - 1, xmax - 1]; boxes are clipped to the image (its `<size>`, or the
image header when the XML has none); `difficult` objects are dropped by default — the published YOLOv5/ultralytics
VOC numbers use labels without them, and ultralytics' loaders have no "ignore" flag to reproduce the devkit's
"neither true nor false positive" rule; `difficult: keep` trains and evaluates them as ordinary objects. XML that
does not parse (the image is dropped), objects whose name is not in `names` or whose box is malformed or has no area
after clipping (the object is dropped) are counted and reported in ONE warning line per split.

The YOLO labels go to `$YOLOC_CACHE/voc/<dataset>-<split>-<source id>-<content key>/` (never into the dataset,
which may be read-only): `images/` holds symlinks to the original images, `labels/` the converted txt files (the
layout ultralytics' YOLODataset reads) and `<split>.txt` the image list. The content key hashes every XML file's
bytes (not its size or date), the class names, the difficult rule and the converter version: any XML edit makes a
new mirror; an unchanged dataset reuses the cached one. A mirror is built in a temporary folder and renamed into
place, so a killed conversion leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from data.formats import IMG_SUFFIXES, DataConfigError, cache_home, check_names, resolve_split
from utils.general import LOGGER

VOC_VERSION = 1  # bump when the conversion changes, so stale mirrors are not reused
SPLITS = ("train", "val", "test")
VOC_KEYS = {"images": "JPEGImages", "annotations": "Annotations", "difficult": "drop"}
MARKER = ".complete"


def cache_root() -> Path:
    """$YOLOC_CACHE/voc, else ~/.cache/yolo-compress/voc (the toolkit's cache, as for the built-in dataset)."""
    return cache_home() / "voc"


@dataclass
class Parsed:
    """One XML file: image size (w, h) in pixels or None, objects as (name, difficult, (x0, y0, x1, y1))."""

    size: tuple[float, float] | None = None
    objects: list[tuple[str, bool, tuple[float, float, float, float] | None]] = field(default_factory=list)
    error: str = ""


@dataclass
class Report:
    """Counts of one split's conversion (reported in one warning line)."""

    images: int = 0
    boxes: int = 0
    background: int = 0
    difficult: int = 0
    bad_xml: int = 0
    missing_image: int = 0
    unknown: int = 0
    unknown_names: list = field(default_factory=list)
    bad_box: int = 0
    zero_area: int = 0
    clipped: int = 0
    first: str = ""

    def note(self, what: str) -> None:
        self.first = self.first or what


def voc_options(d: dict, yaml_path: Path) -> dict:
    """The yaml's `voc:` block (true, or a mapping of images/annotations/difficult) with defaults filled in."""
    v = d.get("voc")
    v = {} if v is True else v
    if not isinstance(v, dict):
        raise DataConfigError(f"data yaml {yaml_path}: 'voc' must be true or a mapping with images/annotations/"
                              f"difficult keys, got {v!r}")
    unknown = sorted(map(str, set(v) - set(VOC_KEYS)))
    if unknown:
        raise DataConfigError(f"data yaml {yaml_path}: unknown 'voc' key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(VOC_KEYS)}")
    out = {**VOC_KEYS, **{k: x for k, x in v.items() if x is not None}}
    if out["difficult"] not in ("drop", "keep"):
        raise DataConfigError(f"data yaml {yaml_path}: voc 'difficult' must be drop or keep, got {out['difficult']!r}")
    for k in ("images", "annotations"):
        if not isinstance(out[k], str) or not out[k].strip():
            raise DataConfigError(f"data yaml {yaml_path}: voc '{k}' must be a folder name, got {out[k]!r}")
    return out


def parse_xml(path: Path) -> Parsed:
    """Read one VOC annotation file. Never raises: a file that does not parse gets `error` set."""
    try:
        root = ET.fromstring(path.read_bytes())
    except (ET.ParseError, OSError, ValueError) as e:
        return Parsed(error=f"{path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if root.tag != "annotation":
        return Parsed(error=f"{path.name}: root element <{root.tag}> is not <annotation>")
    p = Parsed()
    try:
        w, h = float(root.findtext("size/width") or 0), float(root.findtext("size/height") or 0)
        p.size = (w, h) if 0 < w < float("inf") and 0 < h < float("inf") else None
    except ValueError:
        p.size = None
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
        try:
            box = tuple(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            box = None
        p.objects.append((name, difficult, box))
    return p


def _find_image(folder: Path, stem: str) -> Path | None:
    jpg = folder / f"{stem}.jpg"
    if jpg.is_file():
        return jpg
    return next((folder / f"{stem}{s}" for s in sorted(IMG_SUFFIXES) if (folder / f"{stem}{s}").is_file()), None)


def _base(start: Path, root: Path, annotations: str) -> Path:
    """The nearest folder from `start` up to `root` holding the annotations folder; else `root`."""
    for p in (start, *start.parents):
        if (p / annotations).is_dir():
            return p
        if p == root or len(p.parts) <= 1:
            break
    return root


def split_items(entries: list[str], root: Path, opt: dict, rep: Report) -> list[tuple[Path, Path | None]]:
    """(image, its XML or None) for every image a split names, in order, without duplicates."""
    items: dict[Path, Path | None] = {}

    def add(img: Path, base: Path):
        xml = base / opt["annotations"] / f"{img.stem}.xml"
        if not xml.is_file():
            xml = img.with_suffix(".xml") if img.with_suffix(".xml").is_file() else None
        items.setdefault(img, xml)

    for e in map(Path, entries):
        if e.is_dir():
            base = _base(e, root, opt["annotations"])
            for f in sorted(e.rglob("*")):
                if f.suffix.lower() in IMG_SUFFIXES:
                    add(f, base)
        elif e.suffix.lower() in IMG_SUFFIXES:
            add(e, _base(e.parent, root, opt["annotations"]))
        else:  # a list of image ids (VOC ImageSets) or image paths
            base = _base(e.parent, root, opt["annotations"])
            try:
                lines = e.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise DataConfigError(f"split list {e} cannot be read: {err}") from None
            for line in lines:
                tok = line.strip().split()[0] if line.strip() else ""
                if not tok:
                    continue
                if Path(tok).suffix.lower() in IMG_SUFFIXES:
                    q = Path(tok)
                    img = q if q.is_absolute() else next((c for c in (e.parent / q, root / q) if c.is_file()), None)
                    img = img if img is not None and img.is_file() else None
                else:
                    img = _find_image(base / opt["images"], tok)
                if img is None:
                    rep.missing_image += 1
                    rep.note(f"{e.name}: no image for '{tok}' in {base / opt['images']}")
                    continue
                add(img, base)
    return list(items.items())


def _yolo_lines(p: Parsed, img: Path, names: dict[str, int], keep_difficult: bool, rep: Report) -> list[str] | None:
    """YOLO label lines 'cls xc yc w h' (normalized) for one image; None drops the image."""
    if p.error:
        rep.bad_xml += 1
        rep.note(p.error)
        return None
    size = p.size
    if size is None:
        try:
            from PIL import Image
            from ultralytics.data.utils import exif_size

            with Image.open(img) as im:
                size = tuple(map(float, exif_size(im)))
        except Exception as e:  # an unreadable image is ultralytics' to report; it drops it
            rep.bad_xml += 1
            rep.note(f"{img.name}: no <size> in its XML and the image header cannot be read ({e})")
            return None
    w, h = size
    out = []
    for name, difficult, box in p.objects:
        if difficult and not keep_difficult:
            rep.difficult += 1
            continue
        if name not in names:
            rep.unknown += 1
            if name not in rep.unknown_names:
                rep.unknown_names.append(name)
            continue
        if box is None or not all(map(_finite, box)):
            rep.bad_box += 1
            rep.note(f"{img.stem}.xml: object '{name}' has no numeric bndbox")
            continue
        x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2] - 1, box[3] - 1  # VOC pixels are 1-based
        cx0, cy0, cx1, cy1 = min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            rep.zero_area += 1
            rep.note(f"{img.stem}.xml: object '{name}' box {box} has no area inside the {w:g}x{h:g} image")
            continue
        rep.clipped += (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        out.append(f"{names[name]} {(cx0 + cx1) / 2 / w:.6f} {(cy0 + cy1) / 2 / h:.6f} "
                   f"{(cx1 - cx0) / w:.6f} {(cy1 - cy0) / h:.6f}")
    return out


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _key(items: list[tuple[Path, Path | None]], names: list[str], opt: dict) -> str:
    h = hashlib.sha256(json.dumps([VOC_VERSION, names, opt["difficult"]]).encode())
    for img, xml in items:
        h.update(str(img).encode() + b"\0")
        h.update(hashlib.sha256(xml.read_bytes()).digest() if xml is not None else b"-")
    return h.hexdigest()


def _mirror_names(items: list[tuple[Path, Path | None]], root: Path) -> list[str]:
    """Flat, unique file names for the mirror (no '/images/' inside, which would confuse label lookup)."""
    used, out = set(), []
    for img, _ in items:
        try:
            rel = img.relative_to(root).as_posix()
        except ValueError:
            rel = f"{hashlib.sha1(str(img.parent).encode()).hexdigest()[:8]}/{img.name}"
        name = rel.replace("/", "__")
        n = 1
        while name in used:
            name, n = f"{Path(rel).stem}__{n}{img.suffix}", n + 1
        used.add(name)
        out.append(name)
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:  # no symlinks (some Windows setups, some filesystems): a hard link, else a copy
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def _convert(items, parsed, names_idx, opt, rep: Report, final: Path, split: str) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; follow the umask like any folder
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        listed = []
        for (img, xml), name in zip(items, _mirror_names(items, Path(opt["_root"]))):
            lines = [] if xml is None else _yolo_lines(parsed[xml], img, names_idx, opt["difficult"] == "keep", rep)
            if lines is None:
                continue
            rep.background += not lines
            rep.boxes += len(lines)
            _link(img, tmp / "images" / name)
            (tmp / "labels" / Path(name).with_suffix(".txt")).write_text("".join(f"{x}\n" for x in lines))
            listed.append(str(final / "images" / name))
        rep.images = len(listed)
        (tmp / f"{split}.txt").write_text("".join(f"{x}\n" for x in listed))
        (tmp / MARKER).write_text(json.dumps({"version": VOC_VERSION, "report": vars(rep)}) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # another process published a complete copy: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _report_line(what: str, rep: Report, names: list[str]) -> str | None:
    parts = []
    if rep.bad_xml:
        parts.append(f"{rep.bad_xml} image(s) whose XML does not parse")
    if rep.missing_image:
        parts.append(f"{rep.missing_image} listed id(s) with no image")
    if rep.unknown:
        shown = ", ".join(repr(n) for n in rep.unknown_names[:5]) + (" ..." if len(rep.unknown_names) > 5 else "")
        parts.append(f"{rep.unknown} object(s) named {shown} (not in names {names[:5]}{' ...' if len(names) > 5 else ''})")
    if rep.bad_box:
        parts.append(f"{rep.bad_box} object(s) without a numeric box")
    if rep.zero_area:
        parts.append(f"{rep.zero_area} zero-area box(es)")
    if not parts:
        return None
    first = f"; first problem: {rep.first}" if rep.first else ""
    return f"{what}: skipped {'; '.join(parts)}{first}"


def voc_to_yolo(d: dict, root: Path, yaml_path: Path, splits: tuple[str, ...]) -> dict:
    """A VOC data yaml dict -> the same dict with `names` ({index: name}) and the requested splits replaced
    by the absolute path of a converted image list (YOLO labels beside it, in the cache mirror).

    Raises DataConfigError (one line) for a bad `voc:` block, missing split paths, or a split without images.
    """
    opt = {**voc_options(d, yaml_path), "_root": str(root)}
    reports, items = {}, {}
    given = d.get("names")
    wanted = [s for s in SPLITS if d.get(s)] if not given else [s for s in splits if d.get(s)]
    for s in wanted:
        reports[s] = Report()
        items[s] = split_items(resolve_split(root, d[s], s, yaml_path), root, opt, reports[s])
    xmls = {x for s in wanted for _, x in items[s] if x is not None}
    parsed = {x: parse_xml(x) for x in sorted(xmls)}
    if given:
        names = check_names(d, yaml_path)
        LOGGER.info(f"{yaml_path.name}: VOC dataset, {len(names)} class names from the yaml")
    else:
        found = sorted({o[0] for p in parsed.values() for o in p.objects if o[0]})
        if not found:
            raise DataConfigError(f"data yaml {yaml_path}: no 'names' and no named object in the VOC XML of "
                                  f"{', '.join(wanted) or 'any split'}; add names: [...] to the yaml")
        names = dict(enumerate(found))
        LOGGER.info(f"{yaml_path.name}: VOC dataset, {len(names)} class names collected from the XML (no 'names' "
                    f"in the yaml): {', '.join(found[:20])}{' ...' if len(found) > 20 else ''}")
    names_list = [names[i] for i in range(len(names))]
    names_idx = {n: i for i, n in enumerate(names_list)}
    out = {**d, "names": names}
    for s in splits:
        if s not in items:
            continue
        key = _key(items[s], names_list, opt)
        src = hashlib.sha256(json.dumps([str(root), str(d[s]), s]).encode()).hexdigest()[:8]
        final = cache_root() / f"{root.name or 'voc'}-{s}-{src}-{key[:16]}"
        if (final / MARKER).is_file():
            rep = Report(**json.loads((final / MARKER).read_text())["report"])
            LOGGER.info(f"{yaml_path.name} '{s}': VOC labels from the cache {final}")
        else:
            rep = reports[s]
            _convert(items[s], parsed, names_idx, opt, rep, final, s)
            _remove_stale(final, f"{root.name or 'voc'}-{s}-{src}-")
            LOGGER.info(f"{yaml_path.name} '{s}': converted {rep.images} images, {rep.boxes} boxes from VOC XML "
                        f"into {final} ({rep.background} background, {rep.difficult} difficult dropped, "
                        f"{rep.clipped} clipped to the image)")
        line = _report_line(f"{yaml_path.name} '{s}'", rep, names_list)
        if line:
            LOGGER.warning(line)
        if not rep.images:
            raise DataConfigError(f"data yaml {yaml_path}: VOC split '{s}' has no usable image "
                                  f"({line or 'no image found'})")
        out[s] = str(final / f"{s}.txt")
    return out


def _remove_stale(final: Path, prefix: str) -> None:
    """Mirrors of the same dataset split built from older XML content are of no further use."""
    for p in final.parent.glob(f"{prefix}*"):
        if p != final and p.is_dir() and not p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)
