# AGPL-3.0 License
"""Defaults live in cfg/default.yaml; scripts read them here so no default is written twice.

Options with a fixed set of values are `Literal[...]` types in their config dataclass; `choices_of` gives the CLI's
`choices=` from the same type and `check_choice` validates a value against it (one UsageError line).
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from utils.general import UsageError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = ROOT / "cfg" / "default.yaml"


@lru_cache(maxsize=1)
def default_cfg() -> dict:
    """cfg/default.yaml as parsed once (shared: never mutate it; `defaults()` and `default_section()` copy)."""
    return yaml.safe_load(DEFAULT_CFG.read_text())




def defaults(script: str | None = None) -> dict:
    """A fresh copy of cfg/default.yaml's common keys, overridden by the `script:` section if given."""
    d = {k: v for k, v in default_cfg().items() if not isinstance(v, dict)}
    if script:
        d.update(default_cfg().get(script) or {})
    return d


def default_section(name: str) -> dict:
    """A fresh copy of one top-level section of cfg/default.yaml (e.g. 'recovery'); {} when absent."""
    return dict(default_cfg().get(name) or {})


def choices_of(literal: Any) -> tuple:
    """The values of a `Literal[...]` type (also inside Optional/Union), as argparse `choices=`.

    Raises TypeError for anything that holds no Literal, so a typo in a dataclass annotation fails at import."""
    if get_origin(literal) is Literal:
        return tuple(get_args(literal))
    out = tuple(v for a in get_args(literal) if get_origin(a) is Literal for v in get_args(a))
    if not out:
        raise TypeError(f"{literal!r} is not a Literal[...] type")
    return out


def check_choice(value: Any, literal: Any, flag: str) -> Any:
    """`value` if it is one of the Literal's values, else UsageError naming `flag` and the accepted values."""
    allowed = choices_of(literal)
    if value not in allowed:
        raise UsageError(f"{flag} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default (from cfg/default.yaml) and the description's examples kept as written.
    Defaults that say nothing (None, False, '', []) are left out."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "%(default)" in text or d is None or d is False or d is argparse.SUPPRESS or d in ("", []):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            return text + f" (default: {'on' if d else 'off'})"
        if action.nargs == 0:  # a switch: only say so when cfg/default.yaml already turns it on
            return text + " (on by default)" if isinstance(action, argparse._StoreTrueAction) and d is True else text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def explicit_flags(p: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations the user actually typed (recipes and the demo profile must not override them)."""
    saved = {a.dest: a.default for a in p._actions}
    try:
        for a in p._actions:
            a.default = argparse.SUPPRESS
        return set(vars(p.parse_known_args(argv)[0]))
    finally:
        for a in p._actions:
            a.default = saved[a.dest]
