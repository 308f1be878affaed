# AGPL-3.0 License
"""Budgets that cannot surprise: absurd FLOPs targets refused, and warnings when a run collapses.

* PAGCP's own budget rules (its default FLOPs target without the reference flags, the oracle settings used with a
  target, its flag checks) live in prune/methods/pagcp/config.py; `resolve_budget` applies them.
* `--target-flops` below `min_target_flops` (cfg/default.yaml) is refused unless `--force`: a cut that deep leaves
  a detector with next to nothing (docs/benchmarks/pagcp.md).
* After a run: a WARNING line (console and report.md) when the final mAP50-95 is below `warn_map_share` of the
  base model's, or when PAGCP's oracle loss passed its budget (`--initial_thres` x the unpruned loss: with the
  reference flags the cumulative guard then stops the pass; with a FLOPs target the pass goes on to the target),
  saying what to try.
"""

from __future__ import annotations

from prune.groups import GroupSet
from prune.methods.pagcp.config import resolve_target
from utils.general import UsageError

FLOOR_GROUPS = 3  # more groups than this cut to --min-channels: the plan asked for more than the floor allowed


def groups_at_floor(groups: GroupSet, removed: dict[int, list[int]], min_channels: int) -> int:
    """How many prunable groups a plan cuts down to the --min-channels floor (groups no larger than it excluded)."""
    floor = max(int(min_channels), 1)
    return sum(1 for g in groups.prunable if len(g) > floor and len(g) - len(removed.get(g.id, ())) <= floor)


def floor_warning(k: int, n: int, total: int, min_channels: int) -> str:
    """The WARNING line for a round whose plan hit the --min-channels floor in n of its total groups."""
    return (f"WARNING: round {k}: {n} of {total} prunable groups were cut to the --min-channels floor "
            f"({min_channels} channel{'s' if min_channels != 1 else ''}): the plan asked for more than they have; "
            "prune less, or raise --min-channels to keep layers usable")


def resolve_budget(opt, d: dict) -> None:
    """Fill opt.target_flops for PAGCP when no budget was given (prune.methods.pagcp.config.resolve_target), and
    refuse absurd targets.

    opt.explicit: option names set by the user (command line, recipe, demo profile). d: compress defaults.
    Raises UsageError (one line) before anything is written."""
    if opt.method == "pagcp":
        other = getattr(opt, "target_speedup", None) is not None or getattr(opt, "target_latency", None) is not None
        resolve_target(opt, set(getattr(opt, "explicit", None) or ()), d, other)
    least = float(d.get("min_target_flops", 0.1))
    if opt.target_flops is not None and 0 < opt.target_flops < least and not opt.force:
        raise UsageError(f"--target-flops {opt.target_flops} keeps under {least:g} of the base FLOPs, where a detector "
                         "keeps next to nothing; aim higher, prune in --rounds with fine-tuning, or add --force")


def run_warnings(summary: dict, opt, d: dict) -> list[str]:
    """WARNING lines for a finished run: mAP collapsed, or PAGCP's oracle loss budget was spent."""
    out = []
    share = float(d.get("warn_map_share", 0.5))
    base, final = summary["base"]["map50_95"], summary["after"]["map50_95"]
    if base < 1e-3:
        out.append(f"WARNING: the base model's mAP50-95 on {summary['data']} is {base:.4f}: accuracy cannot guide or "
                   "check this compression; validate the model on its own data (--data) first")
    elif final < share * base:
        tuned = (f"after {opt.epochs} fine-tune epoch(s) per round" if opt.epochs > 0 else "without fine-tuning")
        hint = "fine-tune (--epochs 30 or more)" if opt.epochs == 0 else "fine-tune longer (--epochs)"
        target = f" (e.g. --target-flops {min(0.95, round((summary.get('flops_ratio') or 0.5) + 0.1, 2))})"
        out.append(f"WARNING: mAP50-95 fell to {final:.3f}, {final / base:.0%} of the base model's {base:.3f} {tuned} "
                   f"(warned below {share:.0%}, cfg warn_map_share): {hint}, prune less{target} or in several rounds "
                   "(--rounds 3 --epochs N)")
    for r in summary.get("rounds", []):
        if (r.get("groups_at_floor") or 0) > FLOOR_GROUPS:
            out.append(floor_warning(r["round"], r["groups_at_floor"], len(r.get("groups") or []) or r["groups_at_floor"],
                                     opt.min_channels))
        p = r.get("pagcp") or {}
        if p.get("guard_stopped", -1) >= 0:
            out.append(f"WARNING: round {r['round']}: PAGCP's oracle loss passed its budget (--initial_thres "
                       f"{opt.initial_thres} x the unpruned loss) after unit {p['guard_stopped'] + 1} of {p['units']}; "
                       "the rest were not pruned. Lower --initial_rate, or give --target-flops F instead of thresholds")
        elif p.get("target") is not None and p.get("loss_growth", 0) > opt.initial_thres:
            out.append(f"WARNING: round {r['round']}: to reach x{p['target']:.3f} FLOPs PAGCP's oracle loss grew to "
                       f"{p['loss_growth']:.1f}x the unpruned model's, past its budget (--initial_thres "
                       f"{opt.initial_thres}): aim for more FLOPs or prune in several rounds with fine-tuning")
    return out
