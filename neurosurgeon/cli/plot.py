"""The figure of an analysis: per-layer subnetwork density, and baselines vs the ablated subnetwork."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_results"]


def plot_results(results: dict, path: Path) -> None:
    """Write a PNG: left, the fraction of each masked layer's weights in the subnetwork; right, for
    each sub-task, the distribution of baseline accuracies with the zero- and random-ablated
    subnetwork marked."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    layers = results["subnetwork"]["layers"]
    subtasks = results["subtasks"]
    extra = "overlap" in results
    fig, axes = plt.subplots(1, 1 + len(subtasks) + extra, figsize=(5 + 4 * (len(subtasks) + extra), 4.2),
                             constrained_layout=True)
    if extra:
        _plot_overlap(axes[-1], results["overlap"])
        axes = axes[:-1]
    ax = axes[0]
    names = list(layers)
    dens = [layers[n]["density"] for n in names]
    ax.barh(range(len(names)), dens, color="tab:blue")
    ax.set_yticks(range(len(names)), [n if len(n) <= 32 else "…" + n[-31:] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of weights in the subnetwork")
    ax.set_title(f"subnetwork for {results['target_subtask']!r}: {100 * results['subnetwork']['density']:.2f}% kept")
    colors = {"randomly_sampled": "tab:gray", "complement_sampled": "tab:green"}
    for ax, s in zip(axes[1:], subtasks):
        for b, stats in results["baselines"].items():
            if stats is None:
                continue
            ax.hist(stats[s]["values"], bins=20, range=(0, 1), alpha=0.6, color=colors.get(b), label=f"{b} (K={len(stats[s]['values'])})")
        c = results["conditions"]
        ax.axvline(c["zero_ablate"][s], color="tab:red", lw=2, label="subnetwork zero-ablated")
        ax.axvline(c["random_ablate"][s], color="tab:orange", lw=2, ls="--", label="subnetwork random-ablated")
        ax.axvline(c["full"][s], color="black", lw=1, ls=":", label="full model")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"accuracy on {s!r}")
        ax.set_ylabel("baselines")
        at_chance = any(w["kind"] == "full_model_at_chance" and w["data"]["subtask"] == s
                        for w in results.get("warnings", []))
        ax.set_title(f"ablation on {s!r}" + ("\n(full model at chance: not meaningful)" if at_chance else ""))
        ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_overlap(ax, overlap: dict) -> None:
    """Observed IoU of the two sub-tasks' subnetworks beside the IoU two random subnetworks of the
    same sizes would have, for the whole network and each layer, with the hypergeometric p."""
    rows = [("whole network", overlap["total"]), *overlap["layers"].items()]
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [o["iou"] for _, o in rows], height=0.4, color="tab:purple", label="observed IoU")
    ax.barh([i + 0.2 for i in y], [o["expected_iou"] for _, o in rows], height=0.4, color="tab:gray",
            label="chance IoU (random subnetworks)")
    for i, (_, o) in zip(y, rows):
        ax.text(max(o["iou"], o["expected_iou"]) * 1.02, i, f"p = {o['p_value']:.2g}", va="center", fontsize=7)
    ax.set_yticks(list(y), [n if len(n) <= 24 else "…" + n[-23:] for n, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(0.05, *(max(o["iou"], o["expected_iou"]) for _, o in rows)) * 1.35)
    a, b = overlap["subtasks"]
    ax.set_xlabel(f"IoU of the {a!r} and {b!r} subnetworks")
    ax.set_title(f"overlap of {a!r} and {b!r} vs chance")
    ax.legend(fontsize=7, loc="lower right")
