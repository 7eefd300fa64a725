"""Circuits: edge, node and unit masks over a transformer's computational graph, with activation ablations.

The graph (:func:`circuit_graph`) comes from the architecture table and ``model.config``; the
forward (:func:`circuit_forward`) reads the user's own model; the edge formula lives once in
:mod:`neurosurgeon.functional.edges`.
"""

from .ablations import ABLATION_KINDS, ablation_values, learned_ablation
from .discover import TrainedCircuit, task_loss, train_circuit
from .evidence import (
    LADDER, CircuitEvidenceWarning, CircuitScorer, chance_check, chance_level, circuit_evidence, circuit_overlap,
    faithfulness_curve, null_curve, size_ladder, stability,
)
from .formats import (
    CIRCUIT_FORMAT, KV_MERGES, from_auto_circuit, from_circuit_json, from_eap_ig, to_auto_circuit, to_circuit_json,
    to_eap_ig,
)
from .forward import CircuitOutput, UnitAblation, circuit_forward
from .graph import FINE_UNITS, CircuitGraph, circuit_graph
from .masks import LEVELS, CircuitMask
from .metrics import METRICS, edge_attribution, faithfulness, metric_values
from .null import NULLS, evaluate_circuits, null_summary, random_circuits
from .patching import patching_scores

__all__ = [
    "CircuitGraph", "circuit_graph", "FINE_UNITS", "CircuitOutput", "UnitAblation", "circuit_forward", "CircuitMask",
    "LEVELS",
    "ABLATION_KINDS", "ablation_values", "learned_ablation", "METRICS", "metric_values", "faithfulness",
    "edge_attribution", "patching_scores", "NULLS", "random_circuits", "evaluate_circuits", "null_summary",
    "train_circuit", "TrainedCircuit", "task_loss",
    "CIRCUIT_FORMAT", "KV_MERGES", "to_circuit_json", "from_circuit_json", "to_eap_ig", "from_eap_ig",
    "to_auto_circuit", "from_auto_circuit",
    "LADDER", "CircuitEvidenceWarning", "CircuitScorer", "chance_check", "chance_level", "circuit_evidence",
    "circuit_overlap", "faithfulness_curve", "null_curve", "size_ladder", "stability",
]
