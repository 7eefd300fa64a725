"""Text table and ``results.json`` for an analysis."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

__all__ = ["format_table", "format_overlap", "format_warnings", "write_results"]

_LABELS = {
    "full": "full model",
    "subnetwork": "subnetwork only",
    "zero_ablate": "subnetwork zero-ablated",
    "random_ablate": "subnetwork random-ablated",
}


def format_table(results: dict) -> str:
    """The accuracy table (baselines as mean ± std) and the empirical p-values, as text."""
    subtasks = results["subtasks"]
    sub = results["subnetwork"]
    k = results["config"]["seeds"]
    col = max(16, *(len(s) + 2 for s in subtasks))
    name_w = 38
    # A sub-task the full model does at chance is starred; a p-value that means nothing reads n/m.
    at_chance = {w["data"]["subtask"] for w in results.get("warnings", []) if w["kind"] == "full_model_at_chance"}
    p_ok = results.get("p_meaningful", {})
    lines = [
        f"Subnetwork for sub-task {results['target_subtask']!r}: {sub['kept']:,} of {sub['total']:,} weights "
        f"({100 * sub['density']:.2f}%) in {len(sub['layers'])} layers",
        "",
        "accuracy".ljust(name_w) + "".join((s + "*" * (s in at_chance)).rjust(col) for s in subtasks),
        "-" * (name_w + col * len(subtasks)),
    ]
    for cond, label in _LABELS.items():
        accs = results["conditions"][cond]
        lines.append(label.ljust(name_w) + "".join(f"{accs[s]:.3f}".rjust(col) for s in subtasks))
    for b, stats in results["baselines"].items():
        label = f"{b} (K={k})"
        if stats is None:
            lines.append(label.ljust(name_w) + "n/a: " + results.get("baseline_errors", {}).get(b, ""))
            continue
        lines.append(label.ljust(name_w) + "".join(
            f"{stats[s]['mean']:.3f} ± {stats[s]['std']:.3f}".rjust(col) for s in subtasks))
    lines += [
        "",
        "empirical p-value: rank of the ablated subnetwork's accuracy among the K baselines,",
        "(1 + #{baseline <= ablated}) / (K + 1); small = removing the subnetwork hurts more than chance",
        "-" * (name_w + col * len(subtasks)),
    ]
    unmeant = False
    for cond in ("zero_ablate", "random_ablate"):
        for b, p in results["p_values"].get(cond, {}).items():
            label = f"{_LABELS[cond].replace('subnetwork ', '')} vs {b}"
            ok = p_ok.get(cond, {}).get(b, {})
            cells = [f"{p[s]:.3f}" if ok.get(s, True) else "n/m" for s in subtasks]
            unmeant |= "n/m" in cells
            lines.append(label.ljust(name_w) + "".join(c.rjust(col) for c in cells))
    if at_chance:
        lines.append("* the full model is at or below chance on this sub-task: its other numbers are not meaningful")
    if unmeant:
        lines.append("n/m: not meaningful (the full model is at chance there, or all K baselines score the same)")
    if "overlap" in results:
        lines += ["", format_overlap(results["overlap"])]
    return "\n".join(lines)


def format_overlap(overlap: dict) -> str:
    """The two sub-tasks' subnetworks' overlap, whole network and per layer, observed vs chance."""
    a, b = overlap["subtasks"]
    w = max(22, *(len(n) + 2 for n in overlap["layers"]))
    lines = [f"overlap of the {a!r} and {b!r} subnetworks vs two random subnetworks of the same sizes",
             f"{'':{w}}{'kept ' + a:>12}{'kept ' + b:>12}{'both':>9}{'expected':>10}{'IoU':>8}{'chance':>8}{'p':>10}",
             "-" * (w + 69)]
    for name, o in [("whole network", overlap["total"]), *overlap["layers"].items()]:
        lines.append(f"{name:{w}}{o['kept_a']:>12,}{o['kept_b']:>12,}{o['intersection']:>9,}"
                     f"{o['expected_intersection']:>10.1f}{o['iou']:>8.3f}{o['expected_iou']:>8.3f}{o['p_value']:>10.3g}")
    lines.append("p = P(overlap >= observed) for random subnetworks (hypergeometric); small = they share more than chance")
    return "\n".join(lines)


def format_warnings(warnings: list[dict]) -> str:
    """The warnings of an analysis as text, one wrapped paragraph each."""
    lines = [f"warnings ({len(warnings)}, also in results.json):"]
    for w in warnings:
        first, *rest = f"[{w['kind']}] {w['message']}".split("\n")
        lines += textwrap.wrap(first, width=100, initial_indent="  - ", subsequent_indent="    ",
                               break_on_hyphens=False)
        for line in rest:  # indented lines are a list, kept as they are
            lines += ["  " + line] if line.startswith(" ") else textwrap.wrap(
                line, width=100, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def write_results(results: dict, path: Path) -> None:
    """``results.json``: every number the table and the plot show, and the run's configuration."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
