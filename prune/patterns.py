# AGPL-3.0 License
"""Module-name patterns (compress.py --ignore, train.py --sparsity-ignore, val.py --task sensitivity --ignore).

One matcher for every flag that names modules, so they all read a pattern the same way:

- fnmatch globs on the names `model.named_modules()` gives (`model.9.cv1.conv`, `model.0.*`);
- a pattern that names a module covers its submodules: `model.9` matches `model.9.cv1.conv` (but not
  `model.90`), as `model.9.*` does;
- a pattern that matches nothing the flag acts on is an error, not a silent no-op (a typo such as
  `model.99.*` would otherwise prune or penalize exactly what the user meant to protect).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from utils.general import UsageError


def name_matches(name: str, pattern: str) -> bool:
    """True if module `name` is matched by `pattern` itself or lies inside a module it matches."""
    p = pattern.strip().rstrip(".")
    return fnmatchcase(name, p) or fnmatchcase(name, f"{p}.*")


class ModuleMatcher:
    """Matches module names against patterns and remembers which pattern matched what.

    `flag` and `what` only shape the messages: e.g. ModuleMatcher(['model.9'], '--ignore', 'prunable layer').
    """

    def __init__(self, patterns: Iterable[str] | None, flag: str = "--ignore", what: str = "prunable layer"):
        self.patterns = [str(p) for p in (patterns or []) if str(p).strip()]
        self.flag, self.what = flag, what
        self.hits: dict[str, list[str]] = {p: [] for p in self.patterns}  # pattern -> names it matched

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, name: str) -> list[str]:
        """The patterns matching `name` (recorded as hits)."""
        found = [p for p in self.patterns if name_matches(name, p)]
        for p in found:
            if name not in self.hits[p]:
                self.hits[p].append(name)
        return found

    def any(self, names: Iterable[str]) -> list[str]:
        """The patterns matching at least one of `names` (all names are checked, so every hit is recorded)."""
        found: list[str] = []
        for n in names:
            found += [p for p in self.match(n) if p not in found]
        return found

    def check(self, candidates: Iterable[str] = (), listing: str = "") -> None:
        """Raise UsageError naming the first pattern that matched nothing: one line with a few of the
        `candidates` (names the flag could have matched) and `listing` (where to see them all)."""
        unmatched = [p for p in self.patterns if not self.hits[p]]
        if not unmatched:
            return
        names = list(dict.fromkeys(candidates))
        hint = ""
        if names:
            shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
            hint = f"; {self.what}s are named like {shown}"
        listing = f"; {listing}" if listing else ""
        raise UsageError(f"{self.flag} '{unmatched[0]}' matches no {self.what}{hint}{listing} "
                         "(a module name covers its submodules: 'model.9' is all of layer 9)")
