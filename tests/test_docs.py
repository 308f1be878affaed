# AGPL-3.0 License
"""The documentation stays usable: links resolve, every page is reachable, the README's commands run.

- every relative link (and `#anchor`) in README.md, CHANGELOG.md, docs/**/*.md and any */README.md points to an
  existing file (and heading);
- every page under docs/ is reachable from docs/index.md by following links;
- README.md is at most 300 lines and its first `compress.py --weights` command (within the first 150 lines) sets
  `--target-flops`, `--divisor` and `--epochs`;
- every `python <script>.py ...` line in the README's code blocks names an existing script and only flags that
  script's `--help` lists (argparse's unique-prefix abbreviations accepted), and every CLI's `--help` runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIS = ("compress.py", "train.py", "val.py", "detect.py", "export.py", "layer_selection.py")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("runs", "node_modules", "docs"))
        if "README.md" in names and Path(folder) != ROOT:
            files.append(Path(folder) / "README.md")
    return [p for p in files if p.exists()]


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """Prose lines (fenced blocks blanked) and the fenced code blocks (lists of lines)."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`]*`", "", "\n".join(prose))  # inline code is not a link
    return LINK.findall(text)


def resolve(src: Path, target: str) -> tuple[Path | None, str]:
    """(file the link points to, its anchor); None for external links."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None, ""
    file, _, anchor = target.partition("#")
    return (src if not file else (src.parent / file).resolve()), anchor


def test_relative_links_resolve():
    bad = []
    for f in doc_files():
        for target in links(f):
            dest, anchor = resolve(f, target)
            if dest is None:
                continue
            where = f"{f.relative_to(ROOT)}: {target}"
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif not str(dest).startswith(str(ROOT)):
                bad.append(f"{where} (outside the repository)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where} (no heading for #{anchor})")
    assert not bad, "dead links:\n" + "\n".join(bad)


def test_every_docs_page_is_reachable_from_the_index():
    start = ROOT / "docs" / "index.md"
    assert start.exists()
    seen, todo = {start}, [start]
    while todo:
        page = todo.pop()
        for target in links(page):
            dest, _ = resolve(page, target)
            if dest is not None and dest.suffix == ".md" and dest.exists() and dest not in seen:
                seen.add(dest)
                todo.append(dest)
    pages = set(p.resolve() for p in (ROOT / "docs").rglob("*.md"))
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - seen)
    assert not missing, f"not reachable from docs/index.md: {missing}"


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every shell line of the README's code blocks, continuations joined."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    out, in_block, buf, start = [], False, "", 0
    for i, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    return out


def python_invocations() -> list[tuple[int, str, list[str]]]:
    """(line, script or -m module, arguments) for each `python X.py ...` / `python -m mod ...` command."""
    out = []
    for n, cmd in readme_commands():
        try:
            words = shlex.split(cmd, comments=True)
        except ValueError:
            continue
        for i, w in enumerate(words):
            if w not in ("python", "python3") or i + 1 >= len(words):
                continue
            nxt = words[i + 1]
            if nxt == "-m" and i + 2 < len(words):
                out.append((n, "-m " + words[i + 2], words[i + 3:]))
            elif nxt.endswith(".py"):
                out.append((n, nxt, words[i + 2:]))
            break
    return out


def test_readme_length_and_quickstart():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300)"
    first = next(((n, c) for n, c in readme_commands() if re.search(r"compress\.py\s+--weights", c)), None)
    assert first is not None, "no `compress.py --weights` command in the README"
    n, cmd = first
    assert n <= 150, f"the first compress.py --weights command is at line {n} (must be within 150)"
    for flag in ("--target-flops", "--divisor", "--epochs"):
        assert flag in cmd.split(), f"README line {n}: the quickstart command lacks {flag}"


# One process runs every script's --help (runpy, as __main__): torch and ultralytics are imported once.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for script in sys.argv[1:]:
    buf = io.StringIO()
    rc = 0
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:
        rc, buf = 1, io.StringIO(f"{type(e).__name__}: {e}")
    out[script] = [rc, buf.getvalue()]
print("HELP-JSON" + json.dumps(out))
"""


def help_texts(scripts: list[str]) -> dict[str, tuple[int, str]]:
    """script -> (exit status of `script --help`, its output)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", HELP_DRIVER, *scripts], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    tail = r.stdout.rpartition("HELP-JSON")[2]
    assert tail, f"the --help driver failed: {r.stderr[-2000:]}"
    return {k: (v[0], v[1]) for k, v in json.loads(tail).items()}


def known_flags(text: str) -> set[str]:
    return {f for f in re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", text) if not f.endswith("-")}


def flag_ok(flag: str, known: set[str]) -> bool:
    if flag in known:
        return True
    prefixed = [k for k in known if k.startswith(flag)]  # argparse accepts a unique prefix
    return len(prefixed) == 1


def test_readme_commands_use_existing_scripts_and_flags():
    calls = python_invocations()
    assert any(s == "compress.py" for _, s, _ in calls), "the README's python commands were not found"
    scripts = sorted({s for _, s, _ in calls if not s.startswith("-m ")} | set(CLIS))
    bad = []
    for n, s, _ in calls:
        if s.startswith("-m "):
            mod = s[3:].replace(".", "/")
            if not (ROOT / mod.split("/")[0]).is_dir():
                continue  # a third-party module (venv, pytest)
            if not ((ROOT / f"{mod}.py").exists() or (ROOT / mod / "__main__.py").exists()):
                bad.append(f"README line {n}: python {s}: no such module")
        elif not (ROOT / s).exists():
            bad.append(f"README line {n}: {s}: no such script")
    assert not bad, "\n".join(bad)
    helps = help_texts(scripts)
    for s, (rc, text) in helps.items():
        if rc != 0:
            bad.append(f"{s} --help failed (exit {rc}): {text.strip().splitlines()[-1:]}")
    for n, s, args in calls:
        if s not in helps or helps[s][0] != 0:
            continue
        known = known_flags(helps[s][1])
        for a in args:
            if a.startswith("--") and len(a) > 2 and not flag_ok(a.split("=", 1)[0], known):
                bad.append(f"README line {n}: {s} does not know {a}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("flag,ok", [("--imgsz", True), ("--img", True), ("--no-such-flag", False), ("--i", False)])
def test_flag_matching_rules(flag, ok):
    assert flag_ok(flag, {"--imgsz", "--iou-thres"}) is ok
