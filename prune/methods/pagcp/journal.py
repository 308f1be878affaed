# AGPL-3.0 License
"""PAGCP's resume journal: one progress file format for the reference pass, the budgeted greedy and the search.

A pass writes its state after every unit (or pricing round) with `Journal.save`; a run resumed with `--resume`
reads it back with `Journal.load` and continues after the last finished step. Every file carries `format`:
a file written by another format version (or by a version before formats existed) is refused in one line
(UsageError) instead of being half-understood. Only one process of a DDP run writes (`write=False` elsewhere);
every process reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from utils.files import write_json
from utils.general import UsageError

FORMAT = 2  # bump when the state a pass stores changes meaning


class Journal:
    """A progress file at `path`; `write` is False on the processes of a DDP run that only read it."""

    def __init__(self, path: str | Path, write: bool = True):
        self.path, self.write = Path(path), write

    @property
    def name(self) -> str:
        return self.path.name

    def sibling(self, name: str) -> "Journal":
        """A journal beside this one (the search passes' file beside the final pass's)."""
        return Journal(self.path.with_name(name), self.write)

    def save(self, state: dict) -> None:
        """Write `state` (JSON-able) atomically with the format version; a no-op when this process does not write."""
        if self.write:
            write_json({"format": FORMAT, **state}, self.path, indent=None)

    def load(self) -> dict | None:
        """The stored state, or None when there is none or it is unreadable (then the pass is redone).

        Raises UsageError for a file of another format version."""
        if not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # damaged or edited by hand: redo the pass rather than trust it
        if not isinstance(state, dict):
            return None
        if state.get("format") != FORMAT:
            raise UsageError(f"{self.path} was written by an older version of compress.py (journal format "
                             f"{state.get('format', 1)}, this version reads {FORMAT}): start the run again without --resume")
        return state

    def check(self, state: dict, fingerprint: dict, original: np.ndarray) -> None:
        """Refuse (ValueError) a state written for other settings/units (fingerprint) or another model or data
        (the unpruned losses `original` on the calibration images differ)."""
        hint = "resume with the same flags, or delete it to redo this round's pruning"
        fingerprint = json.loads(json.dumps(fingerprint))  # as stored: lists, not tuples
        if {k: state.get(k) for k in fingerprint} != fingerprint:
            raise ValueError(f"{self.path} was written by a PAGCP pass with other settings or another model; {hint}")
        if not np.allclose(state["original"], original, rtol=1e-3, atol=1e-6):
            raise ValueError(f"{self.path}: the unpruned losses differ from this model's on the calibration "
                             f"images (another model or dataset?); {hint}")
