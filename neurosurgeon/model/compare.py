"""How much two subnetworks overlap, per tensor, per layer and per attention head, against chance.

Every count here is a count of mask entries: weights when the masks are at the parameters'
shapes (a model, a subnetwork dict, or a mask file read with ``model=``), mask units when a
file is read without a model. The chance level is the overlap of two independent, uniformly
random subnetworks of the same sizes among the same entries: hypergeometric
(:mod:`neurosurgeon.functional.overlap`). :class:`~neurosurgeon.model.visualize.Visualizer`
draws the same :class:`Overlap` counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import einops
import torch
import torch.nn as nn

from .. import functional as F
from ..functional.overlap import expected_overlap, hypergeometric_sf
from ..functional.strategies import STRATEGIES
from ..functional import units
from ..functional.units import resolve_unit
from .analysis import subnetwork
from .architectures import architecture_of, attention_heads
from .circuit import CircuitModel
from .io import _read
from .select import match_names

__all__ = ["Overlap", "SubnetworkComparison", "compare_subnetworks"]


@dataclass(frozen=True)
class Overlap:
    """Kept counts of two subnetworks over ``total`` entries, and their overlap.

    A single subnetwork is an :class:`Overlap` with ``kept_b = intersection = 0``.
    """

    total: int
    kept_a: int
    kept_b: int = 0
    intersection: int = 0

    def __add__(self, other: "Overlap") -> "Overlap":
        return Overlap(self.total + other.total, self.kept_a + other.kept_a, self.kept_b + other.kept_b,
                       self.intersection + other.intersection)

    @property
    def union(self) -> int:
        return self.kept_a + self.kept_b - self.intersection

    @property
    def iou(self) -> float:
        """Intersection over union (Jaccard index); 0 when both are empty."""
        return self.intersection / self.union if self.union else 0.0

    @property
    def expected_intersection(self) -> float:
        """Mean overlap of two independent uniformly random subnetworks of the same sizes."""
        return expected_overlap(self.total, self.kept_a, self.kept_b)

    @property
    def expected_iou(self) -> float:
        """The IoU at the expected intersection."""
        e = self.expected_intersection
        u = self.kept_a + self.kept_b - e
        return e / u if u else 0.0

    @property
    def p_value(self) -> float:
        """P(X >= intersection) for X the overlap of two random subnetworks of the same sizes."""
        return hypergeometric_sf(self.intersection, self.total, self.kept_a, self.kept_b)

    def shares(self) -> dict[str, float]:
        """Fractions of ``total`` in only A (``model_1``), only B (``model_2``), both, and neither:
        the four segments of a bar, under NeuroSurgeon 0.1.0's names."""
        t = self.total or 1
        only_a, only_b = self.kept_a - self.intersection, self.kept_b - self.intersection
        return {"model_1": only_a / t, "model_2": only_b / t, "intersection": self.intersection / t,
                "unused": (self.total - self.union) / t}

    def to_dict(self) -> dict:
        """Every count and statistic as plain numbers."""
        return {"total": self.total, "kept_a": self.kept_a, "kept_b": self.kept_b, "intersection": self.intersection,
                "union": self.union, "iou": self.iou, "expected_intersection": self.expected_intersection,
                "expected_iou": self.expected_iou, "p_value": self.p_value}


def count_overlap(a: torch.Tensor, b: torch.Tensor | None = None) -> Overlap:
    """The :class:`Overlap` of two same-shape binary masks (or of one, when ``b`` is None)."""
    a = a.bool()
    if b is None:
        return Overlap(a.numel(), int(a.sum()))
    b = b.bool()
    return Overlap(a.numel(), int(a.sum()), int(b.sum()), int((a & b).sum()))


def _head_overlaps(a: torch.Tensor, b: torch.Tensor | None, pattern: str, sizes: dict) -> list[Overlap]:
    """One :class:`Overlap` per attention head of one projection's weight masks."""

    def per_head(m):
        r = einops.reduce(m.to(torch.int64), pattern, "sum", **sizes)
        return (r.sum(0) if r.ndim == 2 else r).tolist()  # a fused projection sums q, k and v

    h = sizes["h"]
    total = a.numel() // h
    kept_a = per_head(a.bool())
    if b is None:
        return [Overlap(total, k) for k in kept_a]
    kept_b, both = per_head(b.bool()), per_head(a.bool() & b.bool())
    return [Overlap(total, ka, kb, i) for ka, kb, i in zip(kept_a, kept_b, both)]


def base_model(model: nn.Module) -> nn.Module:
    """The model a :class:`CircuitModel` wraps, or ``model`` itself."""
    return model.wrapped_model if isinstance(model, CircuitModel) else model


def head_templates(model: nn.Module, *, architecture=None) -> dict[str, tuple[str, dict[str, int]]]:
    """:func:`attention_heads` of ``model`` (masked or not); ``{}`` for a model in no architecture row."""
    if architecture is None:
        try:
            architecture_of(model)
        except ValueError:
            return {}
    return attention_heads(model, architecture=architecture)


def layer_names(names, model: nn.Module | None = None) -> dict[str, str]:
    """Tensor name -> the transformer block (layer) it sits in, as a module name.

    Blocks are the architecture row's ``layers`` glob when ``model`` has a known architecture;
    otherwise, as in NeuroSurgeon 0.1.0, a tensor's layer is its name up to its last numeric
    part (``encoder.layer.3``). Tensors in no layer (embeddings, heads) are left out.
    """
    blocks: list[str] = []
    if model is not None:
        try:
            arch = architecture_of(model)
            blocks = match_names([n for n, _ in model.named_modules()], arch.layers)
        except ValueError:
            blocks = []
    out = {}
    for name in names:
        if blocks:
            hit = next((blk for blk in blocks if name.startswith(blk + ".")), None)
        else:
            parts = name.split(".")[:-1]
            idx = [i for i, p in enumerate(parts) if p.isdigit()]
            hit = ".".join(parts[: idx[-1] + 1]) if idx else None
        if hit is not None:
            out[name] = hit
    return out


@dataclass
class SubnetworkComparison:
    """Overlap of two subnetworks in the whole network, per tensor, per layer and per head.

    Attributes:
        unit: what is counted: ``"weight"`` or ``"mask unit"``.
        total: the whole network.
        tensors: tensor name -> :class:`Overlap`.
        layers: layer (block module name) -> :class:`Overlap` summed over its tensors.
        heads: layer -> one :class:`Overlap` per attention head, summed over the layer's
            attention projections (empty without a model of a known architecture).
    """

    unit: str
    total: Overlap
    tensors: dict[str, Overlap]
    layers: dict[str, Overlap] = field(default_factory=dict)
    heads: dict[str, list[Overlap]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The comparison as JSON-ready dicts."""
        return {"unit": self.unit, "total": self.total.to_dict(),
                "layers": {k: v.to_dict() for k, v in self.layers.items()},
                "heads": {k: [o.to_dict() for o in v] for k, v in self.heads.items()},
                "tensors": {k: v.to_dict() for k, v in self.tensors.items()}}

    def __str__(self) -> str:
        w = max([24, *(len(n) + 2 for n in (*self.layers, *self.tensors))])
        head = (f"{'':{w}}{'kept A':>11}{'kept B':>11}{'both':>11}{'IoU':>8}{'chance IoU':>12}"
                f"{'expected':>12}{'p':>10}")

        def row(name, o):
            return (f"{name:{w}}{o.kept_a:>11,}{o.kept_b:>11,}{o.intersection:>11,}{o.iou:>8.3f}"
                    f"{o.expected_iou:>12.3f}{o.expected_intersection:>12,.1f}{o.p_value:>10.3g}")

        lines = [f"subnetwork overlap ({self.unit}s; p = P(overlap >= observed) for random subnetworks of "
                 "the same sizes)", head, row("all", self.total)]
        for title, rows in (("per layer", self.layers), ("per tensor", self.tensors)):
            if rows:
                lines += [title] + [row(n, o) for n, o in rows.items()]
        for layer, hs in self.heads.items():
            lines += [row(f"{layer} head {i}", o) for i, o in enumerate(hs)]
        return "\n".join(lines)


def tabulate(masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor] | None = None, *,
             model: nn.Module | None = None, unit: str = "weight", heads: dict | None = None) -> SubnetworkComparison:
    """Count one or two same-keyed mask dicts per tensor, per layer and per head.

    Args:
        masks_a, masks_b: tensor name -> binary mask (``masks_b`` None: one subnetwork).
        model: the model the masks belong to, for its layers and attention heads.
        unit: what one mask entry is, for the report.
        heads: :func:`head_templates` of ``model`` (default: computed from it).
    """
    tensors = {n: count_overlap(masks_a[n], None if masks_b is None else masks_b[n]) for n in masks_a}
    total = sum(tensors.values(), Overlap(0, 0))
    layers: dict[str, Overlap] = {}
    for name, layer in layer_names(tensors, model).items():
        layers[layer] = layers.get(layer, Overlap(0, 0)) + tensors[name]
    per_head: dict[str, list[Overlap]] = {}
    if model is not None and unit == "weight":
        templates = head_templates(model) if heads is None else heads
        where = layer_names([f"{m}.weight" for m in templates], model)
        for module, (pattern, sizes) in templates.items():
            key = f"{module}.weight"
            if key not in masks_a or key not in where:
                continue
            hs = _head_overlaps(masks_a[key], None if masks_b is None else masks_b[key], pattern, sizes)
            old = per_head.get(where[key])
            per_head[where[key]] = hs if old is None else [x + y for x, y in zip(old, hs)]
    return SubnetworkComparison(unit, total, tensors, layers, per_head)


def _file_masks(path, model: nn.Module | None, label: str) -> tuple[dict[str, torch.Tensor], str]:
    """The hard masks a mask file describes, at the parameters' shapes with ``model``, else at the units'."""
    meta, tensors = _read(os.fspath(path))
    out = {}
    for layer, d in meta["layers"].items():
        prefix = f"{layer}." if layer else ""
        row = STRATEGIES.get(d["strategy"])
        if row is None:
            raise ValueError(f"{label}: {path} layer {layer!r} has unknown strategy {d['strategy']!r}")
        module = None
        if model is not None:
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"{label}: {path} masks layer {layer!r}, which {type(model).__name__} does not "
                                 "have; the masks are from a different model") from None
        elif not row.has_params:
            raise ValueError(f"{label}: {path} holds magnitude-pruning masks, which are computed from the weights; "
                             "pass model= (the CLI's --model DIR)")
        for suffix in ("weight", "bias")[: 1 + bool(d["mask_bias"])]:
            base = None if module is None else getattr(module, suffix, None)
            params = tensors.get(f"{prefix}{suffix}_mask_params") if row.has_params else base
            if params is None:
                raise ValueError(f"{label}: {path} lacks {prefix}{suffix}_mask_params")
            try:
                unit = None if base is None or suffix == "bias" else resolve_unit(
                    d["kind"], tuple(base.shape), d["mask_unit"], d["unit_sizes"])
                h = F.hard_mask(d["strategy"], params, unit=unit, **d["hparams"]).bool()
                if base is not None:
                    h = (units.expand(h, unit) if unit is not None else h).expand_as(base)
            except (RuntimeError, ValueError) as e:
                if base is None:
                    raise
                raise ValueError(f"{label}: {path} mask of {prefix}{suffix} does not fit the model's tensor of "
                                 f"shape {tuple(base.shape)}; the masks are from a different model ({e})") from None
            out[prefix + suffix] = h
    return out, ("weight" if model is not None else "mask unit")


def _as_masks(x, model: nn.Module | None, label: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(x, nn.Module):
        return subnetwork(base_model(x)), "weight"
    if isinstance(x, (str, os.PathLike)):
        return _file_masks(x, model, label)
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"{label} must map tensor names to mask tensors; {bad[:3]} are not tensors")
        return {k: v.bool() for k, v in x.items()}, "weight"
    raise TypeError(f"{label} must be a model with mask layers, a subnetwork dict or a mask file path, "
                    f"got {type(x).__name__}")


def check_same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], labels=("a", "b")) -> None:
    """Raise ValueError naming every tensor that only one side masks or whose shapes differ."""
    only_a, only_b = [n for n in a if n not in b], [n for n in b if n not in a]
    shapes = [f"{n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}" for n in a if n in b and a[n].shape != b[n].shape]
    problems = []
    if only_a or only_b:
        problems.append(f"tensors masked only in {labels[0]}: {only_a or 'none'}; only in {labels[1]}: {only_b or 'none'}")
    if shapes:
        problems.append("shapes differ: " + "; ".join(shapes))
    if problems:
        raise ValueError(f"{labels[0]} and {labels[1]} are masks of different models (or of different layers): "
                         + "; ".join(problems))


def compare_subnetworks(a, b, *, model: nn.Module | None = None) -> SubnetworkComparison:
    """Overlap of two subnetworks of one model, per tensor, per layer and per head, against chance.

    For each group of mask entries it counts each subnetwork's kept entries, their
    intersection, union and IoU, the intersection expected of two independent uniformly
    random subnetworks of the same sizes, ``k_a k_b / n``, and the p-value
    ``P(X >= intersection)`` with X hypergeometric (exact for small counts).

    Args:
        a, b: each a model with mask layers (a :class:`CircuitModel` too), a subnetwork dict
            (:func:`subnetwork` output), or a mask file written by :func:`save_masks`.
        model: the model the masks belong to (default: ``a`` or ``b`` when one is a model);
            needed for magnitude-pruning files, to count a file's masks per weight rather than
            per mask unit, and for per-layer blocks and per-head counts.

    Returns:
        a :class:`SubnetworkComparison` (``to_dict()``, readable ``str``).

    Raises:
        ValueError: the two mask sets cover different tensors or shapes (masks of different
            models), a file does not fit ``model``, or a magnitude-pruning file without a model.
        TypeError: ``a`` or ``b`` is none of the accepted kinds.

    Example:
        >>> import torch
        >>> a = {"layers.0.w.weight": torch.tensor([1, 1, 0, 0]).bool()}
        >>> b = {"layers.0.w.weight": torch.tensor([1, 0, 1, 0]).bool()}
        >>> t = compare_subnetworks(a, b).total
        >>> t.intersection, round(t.iou, 3), t.expected_intersection, round(t.p_value, 3)
        (1, 0.333, 1.0, 0.833)
    """
    if model is None:
        model = next((x for x in (a, b) if isinstance(x, nn.Module)), None)
    if model is not None:
        model = base_model(model)
    masks_a, unit_a = _as_masks(a, model, "a")
    masks_b, unit_b = _as_masks(b, model, "b")
    check_same_tensors(masks_a, masks_b)
    if model is not None:
        params = dict(model.named_parameters())
        bad = [f"{n}: mask {tuple(m.shape)} vs parameter {tuple(params[n].shape)}"
               for n, m in masks_a.items() if n in params and m.shape != params[n].shape]
        if bad:
            raise ValueError("the masks do not fit model: " + "; ".join(bad))
    unit = "weight" if unit_a == unit_b == "weight" else "mask unit"
    return tabulate(masks_a, masks_b, model=model if unit == "weight" else None, unit=unit)
