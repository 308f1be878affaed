# AGPL-3.0 License
"""The repository's layout rules (docs: DESIGN.md, rules 1-3, 5 and 6), checked on the source text alone.

Pure AST/tokenize walks over the files: nothing of the project is imported, so a broken module cannot hide a
violation and the whole file runs in well under a second.

Layers, lowest first: utils=0, models=1, data=2, prune=3, engine=4, the CLIs (compress.py train.py val.py
detect.py export.py layer_selection.py)=5. A module may import its own layer or a lower one. bench/ and tests/
may import anything, anywhere (they are never imported by the project), so they are exempt as importers; the size
and wording rules skip them too (bench/ keeps its measured numbers and links docs/benchmarks/<page>.md).

Import edges name the exact module imported: `from a.b import c` is an edge to `a.b.c` when that is a module,
else to `a.b`. Imports under `if TYPE_CHECKING:` never run and are ignored. Function-level imports count for
cycles (a cycle hidden in a function still ties the two modules together) and are reported on their own.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"utils": 0, "models": 1, "data": 2, "prune": 3, "engine": 4}
CLIS = ("compress", "train", "val", "detect", "export", "layer_selection")
EXEMPT = ("tests", "bench")  # importers that may import anything; skipped by the size/wording rules
SKIP_DIRS = {".venv", "venv", ".git", "runs", "build", "dist", "__pycache__", "docs"}
MAX_FILE_LINES = 500
MAX_FUNC_LINES = 120
ENGINE_SHARE = 0.30

# Measured numbers, commit ids and issue numbers go stale in code: they belong in docs/benchmarks/<page>.md.
# Each pattern needs context (a metric name, an arrow between decimals, a multiplier, "measured", "commit",
# "issue") so that ordinary numbers (defaults, shapes, thresholds) are not flagged.
STALE_PATTERNS = {
    "issue/PR number": re.compile(r"\b(?:issues?|PRs?|pull requests?)\s*#?\d+\b", re.I),
    "GitHub reference": re.compile(r"(?<![\w&/])#\d{2,}\b"),
    "commit id": re.compile(r"\bcommits?\s+(?:id\s+)?[0-9a-f]{7,40}\b", re.I),
    "bare commit hash": re.compile(r"(?<![\w.\-/])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}(?![\w\-/])"),
    "metric value": re.compile(r"\b(?:mAP(?:@?[.\d:-]+)?|AP(?:50|75)?(?:-95)?|mAR|F1)\s*[=:]?\s*0?\.\d{2,}"),
    "before -> after": re.compile(r"\d*\.\d+\s*%?\s*(?:->|→|=>)\s*\d*\.\d+"),
    "multiplier": re.compile(r"(?<![\w.])[x×]\s?\d+\.\d+\b|\b\d+\.\d+\s?[x×](?![\w])|\b\d+\s?[x×]\s+(?:less|more|faster|"
                             r"slower|fewer|smaller|larger|speed-?up|the speed|cheaper)\b", re.I),
    "measured value": re.compile(r"\bmeasured\b[^\n]{0,40}?(?:\d*\.\d+|\d+\s?%)|(?:\d*\.\d+|\d+\s?%)[^\n]{0,20}?"
                                 r"\bmeasured\b", re.I),
    "timing": re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|min)\s?/\s?(?:img|image|it|iter|epoch|batch|call)\b"),
}


def _layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.get(top, 5 if top in CLIS else None)


@lru_cache(maxsize=None)
def py_files() -> tuple[Path, ...]:
    """Every tracked-looking .py file of the repository (tests and bench included), sorted."""
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        out.append(p)
    return tuple(out)


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _is_exempt(p: Path) -> bool:
    return _rel(p).split("/")[0] in EXEMPT


def project_files() -> list[Path]:
    """The project's own code: every .py outside tests/ and bench/."""
    return [p for p in py_files() if not _is_exempt(p)]


def _module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in py_files()}


@lru_cache(maxsize=None)
def _tree(p: Path) -> ast.Module:
    return ast.parse(p.read_text(encoding="utf-8"), filename=str(p))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(node: ast.AST, top: bool):
    """Yield (import node, at module top) for every import that runs, skipping `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, top
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _walk_imports(ast.Module(body=[sub], type_ignores=[]), top)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield from _walk_imports(child, False)
        else:
            yield from _walk_imports(child, top)


def _resolve_from(p: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = _module_name(p).split(".")
    if p.name != "__init__.py":
        pkg = pkg[:-1]
    base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    return ".".join(base + ([node.module] if node.module else []))


def _is_project(module: str) -> bool:
    return _layer_of(module) is not None


@lru_cache(maxsize=None)
def imports_of(p: Path) -> tuple[tuple[str, int, bool, tuple[str, ...]], ...]:
    """Project imports of file p: (target module, line, at module top, names imported with `from`)."""
    mods = _modules()
    out = []
    for node, top in _walk_imports(_tree(p), True):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_project(a.name):
                    out.append((a.name, node.lineno, top, ()))
            continue
        base = _resolve_from(p, node)
        if not _is_project(base):
            continue
        plain = []
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in mods:
                out.append((sub, node.lineno, top, ()))
            else:
                plain.append(a.name)
        if plain or not node.names:
            out.append((base, node.lineno, top, tuple(plain)))
    return tuple(out)


def _fail(title: str, offenders: list[str], hint: str):
    assert not offenders, f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders) + f"\n{hint}"


def test_every_project_module_has_a_layer():
    bad = [_rel(p) for p in project_files() if _layer_of(_module_name(p)) is None]
    _fail("project files outside the known layers", bad,
          f"put code under {', '.join(LAYERS)} or add a CLI to CLIS in tests/test_layout.py (DESIGN.md rule 1)")


def test_no_upward_import():
    bad = []
    for p in project_files():
        own = _layer_of(_module_name(p))
        for target, line, _, _ in imports_of(p):
            if own is not None and _layer_of(target) > own:
                bad.append(f"{_rel(p)}:{line} imports {target} (layer {_layer_of(target)} > {own})")
    _fail("upward imports", bad, "layers: utils=0 models=1 data=2 prune=3 engine=4 CLIs=5; move the shared code "
          "down to the lowest layer that uses it (DESIGN.md rule 1)")


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    g: dict[str, set[str]] = {}
    for p in project_files():
        me = _module_name(p)
        g[me] = {t for t, *_ in imports_of(p) if t in mods and t != me and not _is_exempt(mods[t])}
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    g = _graph()
    bad = []
    for comp in _cycles(g):
        edges = []
        for m in comp:
            p = _modules()[m]
            edges += [f"{_rel(p)}:{line} -> {t}" + ("" if top else " (in a function)")
                      for t, line, top, _ in imports_of(p) if t in comp and t != m]
        bad.append(" <-> ".join(comp) + "\n      " + "\n      ".join(edges))
    _fail("import cycles (module- and function-level imports)", bad,
          "break each cycle by moving the shared code into a lower module both can import (DESIGN.md rule 1)")


def test_internal_imports_at_module_top():
    bad = [f"{_rel(p)}:{line} imports {t} inside a function or class"
           for p in project_files() for t, line, top, _ in imports_of(p) if not top]
    _fail("project imports not at module top", bad,
          "import project modules at the top of the file; lazy imports are only for heavy optional third-party "
          "code (DESIGN.md rule 2)")


def test_no_private_import_across_modules():
    bad = []
    for p in project_files():
        for t, line, _, names in imports_of(p):
            priv = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
            if priv and t != _module_name(p):
                bad.append(f"{_rel(p)}:{line} from {t} import {', '.join(priv)}")
    _fail("private names imported across modules", bad,
          "promote the name (drop the underscore) or move the code where it is used (DESIGN.md rule 3)")


def test_file_and_function_sizes():
    bad = []
    for p in project_files():
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_FILE_LINES:
            bad.append(f"{_rel(p)}: {n} lines > {MAX_FILE_LINES}")
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNC_LINES:
                    bad.append(f"{_rel(p)}:{node.lineno} {node.name}() {length} lines > {MAX_FUNC_LINES}")
    _fail("files or functions too long", bad, "split by responsibility (DESIGN.md rule 5)")


def _lines() -> dict[str, int]:
    """Lines per top-level folder (or CLI file) of every .py outside tests/."""
    out: dict[str, int] = {}
    for p in py_files():
        top = _rel(p).split("/")[0]
        if top != "tests":
            out[top] = out.get(top, 0) + len(p.read_text(encoding="utf-8").splitlines())
    return out


def test_engine_share_of_code():
    """engine/ lines / lines of every non-test .py (bench/ and the CLIs counted in the total), all physical lines."""
    lines = _lines()
    total = sum(lines.values())
    share = lines.get("engine", 0) / max(total, 1)
    assert share <= ENGINE_SHARE, (f"engine/ holds {share:.1%} of the non-test code ({lines.get('engine', 0)} of "
                                   f"{total} lines) > {ENGINE_SHARE:.0%}: move data, model, pruning or shared helpers "
                                   "to their layer (DESIGN.md target layout)")


def _texts_of(p: Path):
    """(line, text) of every comment and string constant in a .py file (docstrings, help texts, messages)."""
    src = p.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(_tree(p)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for i, line in enumerate(node.value.splitlines() or [""]):
                yield node.lineno + i, line


def stale_hits(text: str) -> list[str]:
    return [name for name, rx in STALE_PATTERNS.items() if rx.search(text)]


def test_stale_patterns_catch_examples():
    for s in ("(issue 17)", "see issue #4", "measured at commit 45c270d", "mAP50-95 0.104 -> 0.055",
              "measured ... x0.72", "29.8x less wall time", "at 3ae4f1b the greedy", "PR #12", "mAP 0.452",
              "2.1 ms/img on the CPU", "0.71 -> 0.69 after fine-tune",
              "measured on yolov5n: 0.291", "12% measured"):
        assert stale_hits(s), s
    for s in ("iou_thres: 0.45  # (float) NMS IoU threshold", "rounds 650 up to 672", "x = 0.5 * w",
              "conf 0.001", "a 3x3 kernel", "stride 2 halves H and W", "def f(x) -> float: ...", "sha256 of the file",
              "version 1.2.3", "lr0: 0.01", "(N, 6) xyxy, conf, cls", "ultralytics 8.4", "1e-9", "#3 of the list",
              "the measured latency speedup is below 1", "always measured on CUDA"):
        assert not stale_hits(s), (s, stale_hits(s))


def test_no_measured_numbers_commit_or_issue_ids():
    bad = []
    for p in project_files():
        for line, text in _texts_of(p):
            hits = stale_hits(text)
            if hits:
                bad.append(f"{_rel(p)}:{line} [{', '.join(hits)}] {text.strip()[:100]}")
    for p in sorted((ROOT / "cfg").rglob("*.y*ml")):
        for i, text in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            hits = stale_hits(text)
            if hits:
                bad.append(f"{_rel(p)}:{i} [{', '.join(hits)}] {text.strip()[:100]}")
    _fail("measured numbers, commit ids or issue numbers in code or cfg/", sorted(set(bad)),
          "they go stale: link docs/benchmarks/<page>.md instead (DESIGN.md rule 6); bench/ may keep numbers")


def test_cfg_keys_documented():
    """Every key of cfg/*.yaml that holds a value (not a section) says `# (type) meaning` on its line."""
    bad = []
    for p in sorted((ROOT / "cfg").rglob("*.y*ml")):
        lines = p.read_text(encoding="utf-8").splitlines()
        for i, text in enumerate(lines, 1):
            m = re.match(r"^(\s*)([\w.-]+):\s*(.*)$", text)
            if not m or m.group(3).startswith("#") and i < len(lines) and _indent(lines[i]) > len(m.group(1)):
                continue  # not a key, or a section (its keys follow, indented)
            if not m.group(3) and i < len(lines) and _indent(lines[i]) > len(m.group(1)):
                continue
            if not re.search(r"#\s*\([^)]+\)\s*\S", text):
                bad.append(f"{_rel(p)}:{i} {text.strip()}")
    _fail("cfg keys without a `# (type) meaning` comment", bad, "document each key on its own line (DESIGN.md)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) if line.strip() else -1
