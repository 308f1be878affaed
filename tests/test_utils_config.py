# AGPL-3.0 License
"""utils.config: defaults from cfg/default.yaml, and Literal option sets shared by dataclasses and CLIs."""

from __future__ import annotations

import argparse
from typing import Literal, Optional

import pytest

from utils.config import check_choice, choices_of, default_cfg, default_section, defaults
from utils.general import UsageError

Mode = Literal["greedy", "search"]


def test_choices_of_literal_and_optional():
    assert choices_of(Mode) == ("greedy", "search")
    assert choices_of(Optional[Mode]) == ("greedy", "search")
    with pytest.raises(TypeError, match="not a Literal"):
        choices_of(str)


def test_argparse_choices_from_the_same_tuple():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=choices_of(Mode), default="greedy")
    assert p.parse_args(["--mode", "search"]).mode == "search"
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "other"])


def test_check_choice_one_line():
    assert check_choice("search", Mode, "--flops-budget") == "search"
    with pytest.raises(UsageError, match=r"^--flops-budget must be one of greedy, search; got 'x'$"):
        check_choice("x", Mode, "--flops-budget")


def test_sections_are_copies():
    rec = default_section("recovery")
    assert rec and rec == default_cfg()["recovery"]
    rec["hyp"] = "changed"
    assert default_cfg()["recovery"]["hyp"] != "changed"
    assert default_section("no-such-section") == {}
    d = defaults("compress")
    assert d["project"] == "runs/compress" and "compress" not in d
