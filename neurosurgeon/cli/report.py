"""Text table and ``results.json`` for an analysis."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["format_table", "write_results"]

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
    lines = [
        f"Subnetwork for sub-task {results['target_subtask']!r}: {sub['kept']:,} of {sub['total']:,} weights "
        f"({100 * sub['density']:.2f}%) in {len(sub['layers'])} layers",
    ]
    if sub["kept"] == 0:
        lines.append("note: the subnetwork is empty, so ablating it changes nothing; lower --l0-lambda or train longer")
    elif sub["kept"] == sub["total"]:
        lines.append("note: the subnetwork holds every weight; raise --l0-lambda or train longer to sparsify it")
    lines += [
        "",
        "accuracy".ljust(name_w) + "".join(s.rjust(col) for s in subtasks),
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
    for cond in ("zero_ablate", "random_ablate"):
        for b, p in results["p_values"].get(cond, {}).items():
            label = f"{_LABELS[cond].replace('subnetwork ', '')} vs {b}"
            lines.append(label.ljust(name_w) + "".join(f"{p[s]:.3f}".rjust(col) for s in subtasks))
    return "\n".join(lines)


def write_results(results: dict, path: Path) -> None:
    """``results.json``: every number the table and the plot show, and the run's configuration."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
