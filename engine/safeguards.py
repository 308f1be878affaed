# AGPL-3.0 License
"""Budgets that cannot surprise: PAGCP's default FLOPs target, absurd targets, and warnings when a run collapses.

* PAGCP without a target and without the reference flags (`--initial_rate`, `--initial_thres`, on the command line,
  in a `--cfg` recipe or in the demo profile) prunes to `pagcp_target` of the base FLOPs (cfg/default.yaml): the
  reference defaults (rate 0.05, thres 5) left the official yolov5n at mAP50-95 0.009 (x0.726) and pruned an
  ultralytics YOLOv9t to x0.142 with mAP 0. With the reference flags PAGCP keeps the reference's behaviour.
* `--target-flops` below `min_target_flops` (0.1) is refused unless `--force`: a 10x cut leaves a detector with
  next to nothing (l1 to 0.01 left yolov5n 5,410 parameters and mAP50-95 6.6e-06).
* After a run: a WARNING line (console and report.md) when the final mAP50-95 is below `warn_map_share` of the
  base model's, or when PAGCP's oracle loss passed its budget (`--initial_thres` x the unpruned loss: with the
  reference flags the cumulative guard then stops the pass; with a FLOPs target the pass goes on to the target),
  saying what to try.
"""

from __future__ import annotations

from utils.general import UsageError

REFERENCE_FLAGS = ("initial_rate", "initial_thres")


def resolve_budget(opt, d: dict) -> None:
    """Fill opt.target_flops for PAGCP when no budget was given, and refuse absurd or conflicting budgets.

    opt.explicit: option names set by the user (command line, recipe, demo profile). d: compress defaults.
    Raises UsageError (one line) before anything is written."""
    explicit = set(getattr(opt, "explicit", None) or ())
    if opt.method == "pagcp":
        if opt.target_flops is None and not any(k in explicit for k in REFERENCE_FLAGS):
            opt.target_flops = d.get("pagcp_target")
        if opt.target_flops is not None:  # the oracle settings measured best to a target, unless given
            for k, v in (d.get("target_oracle") or {}).items():
                if k not in explicit:
                    setattr(opt, k, v)
        if opt.target_flops is not None and opt.pricing_rounds < 1:
            raise UsageError(f"--pricing-rounds must be >= 1, got {opt.pricing_rounds}")
        if opt.target_flops is not None and not 0 < opt.pricing_cut < 1:
            raise UsageError(f"--pricing-cut must be in (0, 1) (the largest share of the FLOPs left one pricing round "
                             f"removes), got {opt.pricing_cut}")
        if opt.target_flops is not None and 0 < opt.topk < 1:  # out-of-range values: check_args says so
            raise UsageError("--topk drops units after the pass and would miss --target-flops: use one or the other")
        if opt.target_flops is not None and not 0 < opt.flops_tol < 0.5:
            raise UsageError(f"--flops-tol must be in (0, 0.5), got {opt.flops_tol}")
        if opt.target_flops is not None and opt.search_images < 1:
            raise UsageError(f"--search-images must be >= 1, got {opt.search_images}")
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
