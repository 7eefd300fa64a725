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
    fig, axes = plt.subplots(1, 1 + len(subtasks), figsize=(5 + 4 * len(subtasks), 4.2), constrained_layout=True)
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
        ax.set_title(f"ablation on {s!r}")
        ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
