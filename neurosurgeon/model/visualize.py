"""Where one or two subnetworks live in a model and how they overlap, drawn per tensor, layer or block.

NeuroSurgeon 0.1.0's ``Visualizer`` and ``VisualizerConfig`` with its options, computed from
hard masks (:func:`~neurosurgeon.model.analysis.subnetwork`, so magnitude pruning counts too)
and counted by the same code as :func:`~neurosurgeon.model.compare.compare_subnetworks`.
Each bar splits a group of weights into four shares of its total: only in subnetwork 1, in
both, only in subnetwork 2, in neither. A layer's share is summed over all of its tensors; a
block is a transformer layer split into its attention heads (from the architecture table)
and its MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..functional._checks import check_bool, check_choice, check_fraction
from ..functional.strategies import STRATEGIES
from ._layers import mask_layers
from .analysis import subnetwork
from .architectures import resolve_architecture
from .compare import Overlap, base_model, check_same_tensors, head_templates, layer_names, tabulate

__all__ = ["Visualizer", "VisualizerConfig", "layout_bars", "draw_bars"]

GRANULARITIES = ("tensor", "layer", "block")


class VisualizerConfig:
    """What the :class:`Visualizer` draws and how (NeuroSurgeon 0.1.0's fields and defaults).

    Args:
        model_list: one or two models with mask layers (a :class:`CircuitModel` too), of the same
            architecture; two also show the subnetworks' overlap.
        model_labels: legend labels of the subnetworks.
        subnetwork_colors: colour of each subnetwork.
        intersect_color: colour of the weights both subnetworks keep.
        unused_color: colour of the weights neither keeps.
        visualize_bias: count bias tensors too (not at ``block`` granularity).
        plot_full_network: every layer (True) or only what is masked (False: the masked tensors
            at ``tensor`` granularity, the layers holding a masked tensor otherwise). A tensor
            a model does not mask counts as fully kept by it.
        plot_granularity: ``tensor``, ``layer`` or ``block`` (attention heads and MLP per layer).
        model_architecture: a row of the architecture table (``""``: from the model's config).
        hidden_size: if not -1, the width each head-split axis must have (``block`` only).
        num_heads: if not -1, the number of heads, overriding the config (``block`` only).
        mask_method: accepted for 0.1.0 compatibility; the hard masks come from each layer.
        outfile: image file written by :meth:`Visualizer.plot` (None: none written).
        format: image format of ``outfile``.
        figsize: figure size in inches.
        title_fontsize, label_fontsize: font sizes of the title and of the labels.
        alpha: opacity of the bars, in [0, 1].
        title: the figure's title.
    """

    def __init__(self, model_list: Sequence[nn.Module], model_labels: Sequence[str] = ("Subnetwork 1", "Subnetwork 2"),
                 subnetwork_colors: Sequence[str] = ("red", "blue"), intersect_color: str = "purple",
                 unused_color: str = "grey", visualize_bias: bool = False, plot_full_network: bool = True,
                 plot_granularity: str = "tensor", model_architecture: str = "", hidden_size: int = -1,
                 num_heads: int = -1, mask_method: str = "continuous_sparsification", outfile: str | None = "plot.png",
                 format: str = "png", figsize: tuple[float, float] = (10.0, 20.0), title_fontsize: int = 24,
                 label_fontsize: int = 18, alpha: float = 0.75, title: str = "Layer By Layer Subnetwork Distribution"):
        models = list(model_list) if isinstance(model_list, Sequence) else [model_list]
        if not 1 <= len(models) <= 2 or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError(f"model_list must hold one or two models, got {len(models)} item(s)")
        for i, m in enumerate(models):
            if not mask_layers(base_model(m)):
                raise ValueError(f"model_list[{i}] ({type(m).__name__}) has no mask layers")
        for name, seq in (("model_labels", model_labels), ("subnetwork_colors", subnetwork_colors)):
            if isinstance(seq, str) or len(seq) < len(models):
                raise ValueError(f"{name} needs one entry per model ({len(models)}), got {seq!r}")
        check_choice("plot_granularity", plot_granularity, GRANULARITIES)
        check_choice("mask_method", mask_method, tuple(STRATEGIES))
        check_bool("visualize_bias", visualize_bias)
        check_bool("plot_full_network", plot_full_network)
        if plot_granularity == "block" and visualize_bias:
            raise ValueError("visualize_bias must be False when plot_granularity is 'block' (heads split weights only)")
        if model_architecture:
            resolve_architecture(None, model_architecture)
        for name, v in (("hidden_size", hidden_size), ("num_heads", num_heads)):
            if not isinstance(v, int) or (v != -1 and v < 1):
                raise ValueError(f"{name} must be -1 (from the model) or a positive int, got {v!r}")
        if len(figsize) != 2 or not all(float(x) > 0 for x in figsize):
            raise ValueError(f"figsize must be two positive numbers, got {figsize!r}")
        self.model_list = models
        self.model_labels = list(model_labels)
        self.subnetwork_colors = list(subnetwork_colors)
        self.intersect_color = intersect_color
        self.unused_color = unused_color
        self.visualize_bias = visualize_bias
        self.plot_full_network = plot_full_network
        self.plot_granularity = plot_granularity
        self.model_architecture = model_architecture
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mask_method = mask_method
        self.outfile = outfile
        self.format = format
        self.figsize = tuple(float(x) for x in figsize)
        self.title_fontsize = title_fontsize
        self.label_fontsize = label_fontsize
        self.alpha = check_fraction("alpha", alpha)
        self.title = title


class Visualizer:
    """Draws the distribution of one or two subnetworks through a model (see :class:`VisualizerConfig`).

    Example:
        >>> import neurosurgeon as ns
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
        >>> _ = ns.inject_masks(model, ["transformer.h.*.attn.*", "transformer.h.*.mlp.*"])
        >>> bars = Visualizer(VisualizerConfig([model], plot_granularity="block", outfile=None)).bars()
        >>> [label for label, _ in bars["transformer.h.0"]]
        ['head 0', 'head 1', 'mlp']
    """

    def __init__(self, config: VisualizerConfig):
        if not isinstance(config, VisualizerConfig):
            raise TypeError(f"config must be a VisualizerConfig, got {type(config).__name__}")
        self.config = config

    def _masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = {n: p for n, p in model.named_parameters() if not n.endswith("_mask_params")}
        hard = subnetwork(model)
        cfg = self.config
        names = [n for n in layer_names(params, model) if cfg.visualize_bias or not n.endswith(".bias")]
        # A tensor the model does not mask is wholly in the network, so wholly kept.
        return {n: hard[n] if n in hard else torch.ones((), dtype=torch.bool).expand(params[n].shape) for n in names}

    def _selected(self, masks: list[dict[str, torch.Tensor]], model: nn.Module) -> list[str]:
        names = list(masks[0])
        if self.config.plot_full_network:
            return names
        masked = {n for m in self.config.model_list for n in subnetwork(base_model(m))}
        if self.config.plot_granularity == "tensor":
            return [n for n in names if n in masked]
        where = layer_names(names, model)
        layers = {where[n] for n in masked if n in where}
        return [n for n in names if where[n] in layers]

    def _heads(self, model: nn.Module) -> dict:
        cfg = self.config
        try:
            templates = head_templates(model, architecture=cfg.model_architecture or None)
        except ValueError as e:
            raise ValueError(f"plot_granularity 'block' needs the model's attention heads: {e}; set "
                             "model_architecture to a row of neurosurgeon.ARCHITECTURES") from None
        out = {}
        shapes = {n: p.shape for n, p in model.named_parameters()}
        for module, (pattern, sizes) in templates.items():
            sizes = dict(sizes, h=cfg.num_heads) if cfg.num_heads != -1 else dict(sizes)
            if cfg.hidden_size != -1:
                _check_width(module, pattern, sizes, shapes[f"{module}.weight"], cfg.hidden_size)
            out[module] = (pattern, sizes)
        return out

    def bars(self) -> dict[str, list[tuple[str, Overlap]]]:
        """The numbers the plot draws: layer (block module name) -> [(bar label, :class:`Overlap`)].

        One bar per tensor, one per layer (labelled with the layer), or one per attention
        head plus one for the MLP, by ``plot_granularity``; ``Overlap.shares()`` gives a
        bar's four segments.
        """
        cfg = self.config
        models = [base_model(m) for m in cfg.model_list]
        masks = [self._masks(m) for m in models]
        if len(masks) == 2:
            check_same_tensors(masks[0], masks[1], labels=("model_list[0]", "model_list[1]"))
        model = models[0]
        names = self._selected(masks, model)
        chosen = [{n: m[n] for n in names} for m in masks]
        heads = self._heads(model) if cfg.plot_granularity == "block" else {}
        table = tabulate(chosen[0], chosen[1] if len(chosen) == 2 else None, model=model, heads=heads)
        return layout_bars(table, cfg.plot_granularity, model=model, architecture=cfg.model_architecture or None)

    def plot(self):
        """Draw the figure, write it to ``outfile`` (when set) and return it.

        Returns:
            the ``matplotlib.figure.Figure``; it was never registered with ``pyplot``, so
            nothing stays open.
        """
        cfg = self.config
        fig = draw_bars(self.bars(), two=len(cfg.model_list) == 2, granularity=cfg.plot_granularity,
                        **{k: getattr(cfg, k) for k in _STYLE})
        if cfg.outfile:
            fig.savefig(cfg.outfile, format=cfg.format)
        return fig


def layout_bars(table, granularity: str, *, model: nn.Module | None = None,
                architecture=None) -> dict[str, list[tuple[str, Overlap]]]:
    """Arrange a :class:`~neurosurgeon.model.compare.SubnetworkComparison` into the bars of a figure.

    Args:
        table: the counts (its ``layers``, ``tensors`` and ``heads``).
        granularity: ``tensor``, ``layer`` or ``block``.
        model: the model the counts belong to (needed for ``block``).
        architecture: the architecture row for ``block`` (default: from the model).

    Returns:
        layer -> [(bar label, :class:`Overlap`)].
    """
    check_choice("granularity", granularity, GRANULARITIES)
    where = layer_names(table.tensors, model)
    out: dict[str, list[tuple[str, Overlap]]] = {}
    for layer, total in table.layers.items():
        tensors = [n for n in table.tensors if where.get(n) == layer]
        if granularity == "layer":
            out[layer] = [(layer, total)]
        elif granularity == "tensor":
            out[layer] = [(n[len(layer) + 1:], table.tensors[n]) for n in tensors]
        else:
            if model is None:
                raise ValueError("granularity 'block' needs the model, for its attention heads")
            params = dict(model.named_parameters())
            attn = f"{layer}.{resolve_architecture(model, architecture).attention}."
            # The MLP is every matrix of the block outside attention: BERT's second MLP
            # projection sits in a sibling of "intermediate", and norms are vectors.
            mlp = [n for n in tensors if not n.startswith(attn) and params[n].ndim >= 2]
            rows = [(f"head {i}", o) for i, o in enumerate(table.heads.get(layer, []))]
            out[layer] = rows + [("mlp", sum((table.tensors[n] for n in mlp), Overlap(0, 0)))]
    return out


_STYLE = ("model_labels", "subnetwork_colors", "intersect_color", "unused_color", "figsize", "title_fontsize",
          "label_fontsize", "alpha", "title")


def draw_bars(bars: dict[str, list[tuple[str, Overlap]]], *, two: bool, granularity: str = "tensor",
              model_labels=("Subnetwork 1", "Subnetwork 2"), subnetwork_colors=("red", "blue"),
              intersect_color: str = "purple", unused_color: str = "grey", figsize=(10.0, 20.0),
              title_fontsize: int = 24, label_fontsize: int = 18, alpha: float = 0.75,
              title: str = "Layer By Layer Subnetwork Distribution"):
    """A figure of stacked horizontal bars, one group per layer (see :class:`VisualizerConfig` for the style).

    Returns:
        a ``matplotlib.figure.Figure`` never registered with ``pyplot``, so nothing stays open.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    segments = [("model_1", subnetwork_colors[0]), ("intersection", intersect_color)]
    segments += [("model_2", subnetwork_colors[1])] if two else []
    segments += [("unused", unused_color)]
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    y, ticks, labels = 0.0, [], []
    for layer, rows in bars.items():
        top = y
        for label, overlap in rows:
            left = 0.0
            for key, colour in segments:
                width = overlap.shares()[key]
                ax.barh(y, width, left=left, height=0.8, color=colour, alpha=alpha)
                left += width
            if granularity != "layer":
                ax.text(0.5, y, label, ha="center", va="center", fontsize=label_fontsize)
            y += 1
        ticks.append((top + y - 1) / 2)
        labels.append(f"Layer: {layer.rsplit('.', 1)[-1]}")
        y += 0.5
    ax.set_yticks(ticks, labels, fontsize=label_fontsize)
    ax.set_ylim(max(y - 0.5, 0.5), -0.75)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the weights", fontsize=label_fontsize)
    ax.set_title(title, fontsize=title_fontsize)
    names = {"model_1": model_labels[0], "model_2": model_labels[1] if two else "",
             "intersection": "both", "unused": "neither" if two else "not kept"}
    ax.legend(handles=[Patch(color=c, alpha=alpha, label=names[k]) for k, c in segments],
              fontsize=label_fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.8 / figsize[1]), ncol=len(segments))
    return fig


def _check_width(module: str, pattern: str, sizes: dict, shape, hidden_size: int) -> None:
    """The weight axis split into heads must be ``hidden_size`` wide (``3 * hidden_size`` when fused)."""
    groups = [g.strip("()").split() for g in _lhs_groups(pattern)]
    for axis, group in enumerate(groups):
        if "h" in group:
            want = hidden_size * (sizes.get("qkv", 1) if "qkv" in group else 1)
            if int(shape[axis]) != want:
                raise ValueError(f"hidden_size={hidden_size} does not fit {module}.weight: its head axis is "
                                 f"{int(shape[axis])} wide, expected {want}")


def _lhs_groups(pattern: str) -> list[str]:
    import re

    return re.findall(r"\([^)]*\)|\S+", pattern.split("->")[0])
