# AGPL-3.0 License
"""Defaults live in cfg/default.yaml; scripts read them here so no default is written twice."""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = ROOT / "cfg" / "default.yaml"


@lru_cache(maxsize=1)
def _defaults() -> dict:
    return yaml.safe_load(DEFAULT_CFG.read_text())


def defaults(script: str | None = None) -> dict:
    """A fresh copy of cfg/default.yaml's common keys, overridden by the `script:` section if given."""
    d = {k: v for k, v in _defaults().items() if not isinstance(v, dict)}
    if script:
        d.update(_defaults().get(script) or {})
    return d


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
