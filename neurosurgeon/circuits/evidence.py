"""The evidence a circuit number needs: a faithfulness curve over circuit sizes, the null at every
size, the chance level of the full model, and how stable and how overlapping circuits are.

A circuit's faithfulness at one size says little alone. Read it with:

- **the curve**: the faithfulness of the top-k circuit of one edge ranking (a trained mask's
  theta, EAP scores) at a ladder of sizes k, and its area (after the circuit performance ratio of
  the MIB benchmark: Mueller et al. 2025, arXiv 2504.13151), the trapezoid area under
  faithfulness against the fraction of edges kept, divided by the ladder's span of fractions so
  that it is a mean faithfulness;
- **the null at every size**: K random circuits of the same size (``uniform`` or ``in_degree``,
  :mod:`neurosurgeon.circuits.null`), their median and 5-95% band and the circuit's p-value;
  size i of the ladder draws from ``fold_in(key_null, i)``, ``key_null`` being
  ``split(key, len(NULLS))[NULLS.index(null)]``, so one null's draws do not depend on which other
  nulls are asked for;
- **stability**: the Jaccard index (intersection over union) of circuits found from different
  seeds or data resamples, each pair beside the Jaccard index two random circuits of the same
  sizes would have and its hypergeometric p-value (:mod:`neurosurgeon.model.compare`);
- **warnings** where a number means nothing: the full model is at chance on the task, the full
  and the ablated model score the same (faithfulness undefined), or the circuit lies inside the
  null's band. Each is a :class:`CircuitEvidenceWarning` and an entry ``{"kind", "message",
  "data"}`` of the returned ``"warnings"``.

Every function returns plain numbers, lists and dicts (NaN where a number is undefined), ready for
``json.dumps``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..functional import random as nr
from ..functional.edges import top_k_circuit
from ..model.compare import count_overlap
from .ablations import ablation_values
from .forward import circuit_forward
from .graph import CircuitGraph
from .metrics import METRICS, faithfulness, metric_values
from .null import NULLS, check_chunk_size, evaluate_circuits, null_summary, random_circuits

__all__ = [
    "CircuitEvidenceWarning", "CircuitScorer", "LADDER", "size_ladder", "faithfulness_curve", "null_curve",
    "chance_level", "chance_check", "circuit_evidence", "circuit_overlap", "stability",
]

#: The fractions of edges kept at which MIB evaluates a circuit's faithfulness curve.
LADDER = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

#: How many standard errors the full model's mean must beat chance by to count as doing the task.
_Z_ABOVE_CHANCE = 2.0


class CircuitEvidenceWarning(UserWarning):
    """A circuit number that means nothing as it stands (see the module docstring)."""


def _warn(found: list[dict], kind: str, message: str, **data) -> None:
    found.append({"kind": kind, "message": message, "data": data})
    warnings.warn(message, CircuitEvidenceWarning, stacklevel=3)


# -- scoring circuits on a task ----------------------------------------------------------------

class CircuitScorer:
    """The mean of a metric over every example of a task, for many circuits at once.

    Each batch is a dict as :func:`~neurosurgeon.circuits.train_circuit` takes it (``input_ids``
    and, as the metric and ablation need them, ``corrupted``, ``answers``, ``wrong``,
    ``positions``, ``attention_mask``); batches may differ in length. A batch's ablated values and
    (for ``kl``) the full model's logits are computed once, here.

    Args:
        model: the model, in eval mode.
        graph: its circuit graph.
        batches: the task's examples.
        metric: a key of :data:`~neurosurgeon.circuits.metrics.METRICS`.
        ablation: ``"zero"``, ``"mean"`` (needs ``reference``) or ``"resample"`` (needs each
            batch's ``corrupted``), or the values themselves, a tensor broadcastable to
            ``(writers, B, T, D)`` (e.g. a trained circuit's learned ablation).
        reference: ``(N, T)`` token ids a mean ablation averages over.
        chunk_size: circuits scored at once (memory); default
            :func:`~neurosurgeon.circuits.null.circuit_chunk_size`.

    Calling it on ``(K, edges)`` circuits gives ``(K,)`` float64 means over all examples, each
    batch weighted by its size.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8,
        ...                                    bos_token_id=0, eos_token_id=0)).eval()
        >>> graph = circuit_graph(model)
        >>> ids = torch.randint(10, (3, 4), generator=torch.Generator().manual_seed(0))
        >>> scorer = CircuitScorer(model, graph, [{"input_ids": ids, "answers": ids[:, 0], "wrong": ids[:, 1]}],
        ...                        metric="logit_diff")
        >>> scorer(torch.stack([torch.ones(graph.num_edges), torch.zeros(graph.num_edges)])).shape
        torch.Size([2])
    """

    def __init__(self, model: nn.Module, graph: CircuitGraph, batches: Iterable[Mapping[str, torch.Tensor]], *,
                 metric: str, ablation: str | torch.Tensor = "zero", reference: torch.Tensor | None = None,
                 chunk_size: int | None = None):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; allowed: {list(METRICS)}")
        if isinstance(ablation, str) and ablation == "learned":
            raise ValueError("ablation='learned': pass the learned values themselves (TrainedCircuit.ablation)")
        self.model, self.graph, self.metric = model, graph, metric
        self.chunk_size = check_chunk_size(chunk_size)  # at construction, not at the first call
        self.higher_is_better = METRICS[metric][1]
        self._dtype = next(model.parameters()).dtype
        self._parts = []
        for batch in batches:
            ids, attention = batch["input_ids"], batch.get("attention_mask")
            if isinstance(ablation, torch.Tensor):
                a = ablation.detach()
            else:
                a = ablation_values(model, graph, ablation, ids, reference=reference, corrupted=batch.get("corrupted"),
                                    attention_mask=attention)
            full = None
            if metric == "kl":
                with torch.no_grad():
                    full = circuit_forward(model, graph, ids, attention_mask=attention).output
            self._parts.append((batch, a, full))
        if not self._parts:
            raise ValueError("batches is empty: a task needs at least one batch of examples")
        self.num_examples = sum(int(b["input_ids"].shape[0]) for b, _, _ in self._parts)

    def _values(self, logits, batch, full):
        return metric_values(self.metric, logits, answers=batch.get("answers"), wrong=batch.get("wrong"),
                             full_logits=full, positions=batch.get("positions"))

    def __call__(self, circuits: torch.Tensor) -> torch.Tensor:
        if circuits.dim() != 2 or circuits.shape[1] != self.graph.num_edges:
            raise ValueError(f"circuits must have shape (K, {self.graph.num_edges}), got {tuple(circuits.shape)}")
        circuits = circuits.to(self._dtype)
        total = torch.zeros(circuits.shape[0], dtype=torch.float64)
        for batch, a, full in self._parts:
            def score(logits, batch=batch, full=full):
                return self._values(logits, batch, full).mean()

            n = int(batch["input_ids"].shape[0])
            means = evaluate_circuits(self.model, self.graph, circuits.to(batch["input_ids"].device),
                                      batch["input_ids"], score, ablated=a, attention_mask=batch.get("attention_mask"),
                                      chunk_size=self.chunk_size)
            total += n * means.detach().double().cpu()
        return total / self.num_examples

    def values(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The metric per example ``(N,)`` in batch order: of the circuit ``mask`` ``(edges,)``, or
        of the full model when None."""
        out = []
        with torch.no_grad():
            for batch, a, full in self._parts:
                ids = batch["input_ids"]
                m = None if mask is None else mask.to(device=ids.device, dtype=self._dtype)
                logits = circuit_forward(self.model, self.graph, ids, mask=m, ablated=None if mask is None else a,
                                         attention_mask=batch.get("attention_mask")).output
                out.append(self._values(logits, batch, full).double().cpu())
        return torch.cat(out)


# -- the faithfulness curve ----------------------------------------------------------------------

def size_ladder(num_edges: int, *, fractions: Sequence[float] = LADDER, include: Iterable[int] = ()) -> list[int]:
    """Circuit sizes: ``round(f * num_edges)`` (at least 1) for each fraction f, and the sizes in
    ``include``, sorted, each once.

    Example:
        >>> size_ladder(110, include=[20])
        [1, 2, 6, 11, 20, 22, 55, 110]
    """
    if isinstance(num_edges, bool) or not isinstance(num_edges, int) or num_edges < 1:
        raise ValueError(f"num_edges must be a positive int, got {num_edges!r}")
    sizes = set()
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f!r}")
        sizes.add(max(1, round(f * num_edges)))
    for k in include:
        sizes.add(k)
    return _check_sizes(sorted(sizes), num_edges)


def _check_sizes(sizes, num_edges: int) -> list[int]:
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes is empty: give at least one circuit size")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_edges:
            raise ValueError(f"sizes must be ints in [1, {num_edges}] (the graph's edges), got {k!r}")
    if sizes != sorted(set(sizes)):
        raise ValueError(f"sizes must be increasing, each once, got {sizes}")
    return sizes


def _circuits(scores: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be one value per edge (edges,), got shape {tuple(scores.shape)}")
    scores = scores.detach().float().cpu()
    return torch.stack([top_k_circuit(scores, k) for k in sizes])


def _gap_is_zero(full: float, empty: float) -> bool:
    # Scores are float32 sums: agreement within rounding is agreement.
    return abs(full - empty) <= 1e-5 * (1 + abs(full) + abs(empty))


def _faith(value: float, full: float, empty: float) -> float:
    if _gap_is_zero(full, empty) or not math.isfinite(value):
        return math.nan
    return float(faithfulness(value, full, empty))


def _area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``fractions``, divided by the fractions' span."""
    if any(not math.isfinite(v) for v in values):
        return math.nan
    if len(values) == 1:
        return float(values[0])
    area = sum((fractions[i + 1] - fractions[i]) * (values[i + 1] + values[i]) / 2 for i in range(len(values) - 1))
    return area / (fractions[-1] - fractions[0])


def faithfulness_curve(scorer: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor,
                       sizes: Sequence[int]) -> dict:
    """The faithfulness of the top-k circuit of ``scores`` at each size k, and the curve's area.

    Faithfulness is ``(S(circuit) - S(empty)) / (S(full) - S(empty))`` on the task score S
    (:func:`~neurosurgeon.circuits.faithfulness`); the area is the trapezoid area under
    faithfulness against the fraction of edges kept, divided by the ladder's span of fractions
    (MIB's circuit performance ratio, Mueller et al. 2025, arXiv 2504.13151, normalised to a mean).

    Args:
        scorer: circuits ``(K, edges)`` -> scores ``(K,)`` (e.g. a :class:`CircuitScorer`).
        scores: ``(edges,)``: the edge ranking (ties: the earlier edge).
        sizes: increasing circuit sizes in [1, edges] (e.g. :func:`size_ladder`).

    Returns:
        ``{"sizes", "fractions", "score", "faithfulness", "full", "empty", "area", "warnings"}``;
        faithfulness and area are NaN, with a ``faithfulness_undefined`` warning, where the full and
        the empty circuit score the same.
    """
    num_edges = scores.shape[-1]
    sizes = _check_sizes(sizes, num_edges)
    circuits = _circuits(scores, sizes)
    ends = torch.stack([torch.ones(num_edges), torch.zeros(num_edges)])
    values = scorer(torch.cat([ends, circuits])).double().tolist()
    full, empty, ours = values[0], values[1], values[2:]
    found: list[dict] = []
    if _gap_is_zero(full, empty):
        _warn(found, "faithfulness_undefined",
              f"the full model and the empty circuit (every edge ablated) score the same ({full:.6g} vs {empty:.6g}): "
              "faithfulness divides by their difference, so it is undefined (NaN). The ablation removes nothing the "
              "task needs: check that corrupted prompts differ from clean ones where it matters, or pick another "
              "ablation or metric", full=full, empty=empty)
    faith = [_faith(v, full, empty) for v in ours]
    fractions = [k / num_edges for k in sizes]
    return {"sizes": list(sizes), "fractions": fractions, "score": ours, "faithfulness": faith, "full": full,
            "empty": empty, "area": _area(fractions, faith), "warnings": found}


# -- the null at every size -----------------------------------------------------------------------

def null_curve(key: torch.Tensor, scorer: Callable[[torch.Tensor], torch.Tensor], graph: CircuitGraph,
               circuits: torch.Tensor, ours: Sequence[float], *, num: int, null: str = "uniform",
               higher_is_better: bool = True, full: float | None = None, empty: float | None = None) -> dict:
    """For circuit i of ``circuits``, ``num`` random circuits of its size drawn from
    ``fold_in(key, i)`` (:func:`~neurosurgeon.circuits.random_circuits`), scored: their median and
    5-95% band and the p-value of ``ours[i]`` (:func:`~neurosurgeon.circuits.null_summary`).

    A circuit of every edge has no null (every circuit of that size is the full model): its entry
    is None.

    Args:
        key: PRNG key.
        scorer: circuits ``(K, edges)`` -> scores ``(K,)``.
        circuits: ``(S, edges)`` binary circuits; ours: their scores ``(S,)``.
        num: K, random circuits per size.
        null: ``"uniform"`` or ``"in_degree"``.
        full, empty: the full model's and the empty circuit's scores; with both, each entry also
            gives the faithfulness of the null's median and band.

    Returns:
        ``{"null", "num", "sizes": [entry or None per circuit], "median_area", "warnings"}``. An entry
        holds ``size``, null_summary's keys (``value``, ``null_median``, ``null_q05``, ``null_q95``,
        ``p_value``, ``null_size``), ``within_band`` (ours inside [q05, q95]) and, given full and
        empty, ``faithfulness`` (the same four numbers as faithfulness). ``median_area`` is the area of
        the null median's faithfulness curve (as :func:`faithfulness_curve`'s; a full circuit counts
        1). A ``circuit_within_null`` warning lists the sizes where ours is inside the band.
    """
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}, got {null!r}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an int >= 2 (a band needs several random circuits), got {num!r}")
    if circuits.dim() != 2 or circuits.shape[1] != graph.num_edges:
        raise ValueError(f"circuits must have shape (S, {graph.num_edges}), got {tuple(circuits.shape)}")
    if len(ours) != circuits.shape[0]:
        raise ValueError(f"ours must give one score per circuit ({circuits.shape[0]}), got {len(ours)}")
    with_faith = full is not None and empty is not None
    entries, within = [], []
    for i, circuit in enumerate(circuits):
        size = int(circuit.sum())
        if size == graph.num_edges:
            entries.append(None)
            continue
        drawn = random_circuits(nr.fold_in(key, i), graph, circuit.float().cpu(), num, null=null)
        entry = {"size": size, **null_summary(ours[i], scorer(drawn), higher_is_better=higher_is_better)}
        entry["within_band"] = entry["null_q05"] <= entry["value"] <= entry["null_q95"]
        if with_faith:
            entry["faithfulness"] = {k: _faith(entry[k], full, empty)
                                     for k in ("value", "null_median", "null_q05", "null_q95")}
        if entry["within_band"]:
            within.append(size)
        entries.append(entry)
    found: list[dict] = []
    if within:
        _warn(found, "circuit_within_null",
              f"against the {null} null, the circuit scores inside the 5-95% band of {num} random circuits of its size "
              f"at {len(within)} size(s) {within}: there it is not distinguishable from a random circuit of the same "
              "size, however faithful it is", null=null, sizes=within, num=num)
    median_area = math.nan
    if with_faith:
        fractions = [int(c.sum()) / graph.num_edges for c in circuits]
        medians = [1.0 if e is None else e["faithfulness"]["null_median"] for e in entries]
        median_area = _area(fractions, medians)
    return {"null": null, "num": num, "sizes": entries, "median_area": median_area, "warnings": found}


# -- chance ------------------------------------------------------------------------------------------

def chance_level(metric: str, vocab_size: int) -> float | None:
    """The metric of a model that does not do the task, per example.

    ``logit_diff``: 0 (the answer no likelier than the wrong one); ``accuracy``: 1 / vocab (a
    uniform guess); ``cross_entropy``: log vocab (a uniform distribution); ``kl``: None (the full
    model is its own reference: KL 0 by definition, so there is no chance level).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {list(METRICS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    return {"logit_diff": 0.0, "accuracy": 1 / vocab_size, "cross_entropy": math.log(vocab_size), "kl": None}[metric]


def chance_check(values: torch.Tensor, chance: float | None, *, higher_is_better: bool = True) -> dict:
    """Whether the full model does the task: its mean metric beats ``chance`` by at least two
    standard errors of the mean (one example: by any margin).

    Args:
        values: the full model's metric per example ``(N,)`` (:meth:`CircuitScorer.values`).
        chance: the chance level (:func:`chance_level`); None: no check.

    Returns:
        ``{"mean", "chance", "std_error", "z", "n", "above_chance", "warnings"}``, with a
        ``full_model_at_chance`` warning when it does not beat chance.
    """
    values = values.detach().double().flatten()
    n = int(values.numel())
    if n == 0:
        raise ValueError("values is empty: the chance check needs the metric of at least one example")
    mean = float(values.mean())
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    out = {"mean": mean, "chance": chance, "std_error": se, "z": math.nan, "n": n, "above_chance": None,
           "warnings": []}
    if chance is None:
        return out
    margin = (mean - chance) if higher_is_better else (chance - mean)
    z = margin / se if n > 1 and se > 0 else (math.inf if margin > 0 else -math.inf)
    out["z"] = z
    out["above_chance"] = margin > 0 and (n == 1 or z >= _Z_ABOVE_CHANCE)
    if not out["above_chance"]:
        _warn(out["warnings"], "full_model_at_chance",
              f"the full model does not beat chance on the task: mean {mean:.4g} vs chance {chance:.4g} "
              f"({'higher' if higher_is_better else 'lower'} is better; z = {z:.2f} standard errors over {n} examples, "
              f"{_Z_ABOVE_CHANCE:g} needed). It does not do the task, so no circuit of it does: faithfulness, the "
              "null and the p-values are not meaningful", mean=mean, chance=chance, std_error=se, z=z, n=n)
    return out


# -- everything for one edge ranking ---------------------------------------------------------------

def circuit_evidence(key: torch.Tensor, scorer: CircuitScorer, scores: torch.Tensor, sizes: Sequence[int], *,
                     num_null: int = 100, nulls: Sequence[str] = NULLS, chance: float | None = None) -> dict:
    """The faithfulness curve of ``scores``' top-k circuits, the nulls at every size and the chance check.

    Args:
        key: PRNG key; null n draws from ``split(key, len(NULLS))[NULLS.index(n)]``, its size i
            from ``fold_in`` of that with i.
        scorer: the task (its metric says which direction is better).
        scores: ``(edges,)`` edge ranking.
        sizes: increasing circuit sizes.
        num_null: K, random circuits per size and null.
        nulls: which nulls.
        chance: the metric's chance level (:func:`chance_level`); None: no chance check.

    Returns:
        ``{"metric", "higher_is_better", "full", "empty", "curve", "null": {name: null_curve(...)},
        "chance": chance_check(...), "warnings"}``, every warning of the parts in one list.
    """
    for n in nulls:
        if n not in NULLS:
            raise ValueError(f"nulls must be among {NULLS}, got {n!r}")
    curve = faithfulness_curve(scorer, scores, sizes)
    found = list(curve.pop("warnings"))
    checked = chance_check(scorer.values(), chance, higher_is_better=scorer.higher_is_better)
    found += checked.pop("warnings")
    keys = nr.split(key, len(NULLS))
    circuits = _circuits(scores, curve["sizes"])
    by_null = {}
    for n in nulls:
        by_null[n] = null_curve(keys[NULLS.index(n)], scorer, scorer.graph, circuits, curve["score"], num=num_null,
                                null=n, higher_is_better=scorer.higher_is_better, full=curve["full"],
                                empty=curve["empty"])
        found += by_null[n].pop("warnings")
    return {"metric": scorer.metric, "higher_is_better": scorer.higher_is_better, "full": curve["full"],
            "empty": curve["empty"], "curve": curve, "null": by_null, "chance": checked, "warnings": found}


# -- overlap and stability -------------------------------------------------------------------------

def _binary(mask, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.dim() != 1:
        raise ValueError(f"{name} must be a 1-d (edges,) mask, got shape {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must be binary (0/1 or bool): threshold a soft mask first (CircuitMask.top_k)")
    return mask.bool()


def circuit_overlap(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How two circuits ``(edges,)`` overlap, against two random circuits of the same sizes.

    Counts and statistics of :class:`neurosurgeon.model.compare.Overlap`: ``total``, ``kept_a``,
    ``kept_b``, ``intersection``, ``union``, ``iou`` (Jaccard), ``expected_intersection``,
    ``expected_iou`` and the hypergeometric ``p_value`` P(X >= intersection) (Fisher 1935).

    Example:
        >>> o = circuit_overlap(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 0, 0]))
        >>> o["iou"], round(o["p_value"], 4)
        (1.0, 0.1667)
    """
    a, b = _binary(a, "a"), _binary(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be circuits of one graph, got {tuple(a.shape)} and {tuple(b.shape)} edges")
    return count_overlap(a, b).to_dict()


def stability(circuits: Sequence[torch.Tensor] | torch.Tensor) -> dict:
    """The Jaccard index of every pair of circuits found from different seeds or data resamples.

    Args:
        circuits: R >= 2 binary circuits ``(edges,)`` (or one ``(R, edges)`` tensor) of one graph.

    Returns:
        ``{"runs", "pairs", "mean_iou", "min_iou", "max_iou", "mean_expected_iou"}``; ``pairs`` has one
        :func:`circuit_overlap` dict per pair i < j, with ``a = i`` and ``b = j``. Compare
        ``mean_iou`` with ``mean_expected_iou``, the Jaccard index random circuits of the same sizes
        would have.

    Example:
        >>> s = stability([torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 0, 0])])
        >>> s["runs"], [round(p["iou"], 3) for p in s["pairs"]]
        (3, [0.333, 1.0, 0.333])
    """
    circuits = list(circuits)
    if len(circuits) < 2:
        raise ValueError(f"stability needs at least 2 circuits, got {len(circuits)}")
    masks = [_binary(c, f"circuits[{i}]") for i, c in enumerate(circuits)]
    if len({m.shape for m in masks}) != 1:
        raise ValueError(f"circuits must all have one graph's edges, got shapes {sorted({tuple(m.shape) for m in masks})}")
    pairs = [{"a": i, "b": j, **count_overlap(masks[i], masks[j]).to_dict()}
             for i in range(len(masks)) for j in range(i + 1, len(masks))]
    ious = [p["iou"] for p in pairs]
    return {"runs": len(masks), "pairs": pairs, "mean_iou": sum(ious) / len(ious), "min_iou": min(ious),
            "max_iou": max(ious), "mean_expected_iou": sum(p["expected_iou"] for p in pairs) / len(pairs)}
