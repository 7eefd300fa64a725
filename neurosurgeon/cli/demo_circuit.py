"""The demo's circuit part: the edges of the shipped induction model that copy in context, found by
training edge masks and judged against random circuits of the same size (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ..circuits import NULLS, circuit_graph
from ..circuits.zoo import induction_batch, induction_model
from ..functional import random as nr
from .circuit import _check_options, judge_circuit

__all__ = ["run_circuit_demo", "CIRCUIT_DIR"]

#: The circuit part's files go here, inside the demo's --out.
CIRCUIT_DIR = "circuit"
# The demo's circuit draws are their own stream of its seed: fold_in(key(seed), _STREAM).
_STREAM = 0x63697263
_BATCHES, _ROWS, _LENGTH = 1, 16, 20
# Random circuits scored at once: small chunks stay in cache on a CPU, and a vmap over many only
# grows the tensors.
_CHUNK = 8


def run_circuit_demo(args, console, device) -> dict:
    """Find and judge the induction circuit; write its files into ``args.out/circuit``.

    Returns the ``circuit`` entry of the demo's ``results.json``.
    """
    model = induction_model().to(device).eval().requires_grad_(False)
    graph = circuit_graph(model)
    key = nr.fold_in(nr.key(args.seed), _STREAM)
    batches = [{k: v.to(device) for k, v in induction_batch(nr.fold_in(key, i), _ROWS, _LENGTH).items()}
               for i in range(_BATCHES)]
    options = SimpleNamespace(
        model="neurosurgeon.circuits.zoo.induction_model()", data=f"induction_batch: {_BATCHES} x {_ROWS} rows of "
        f"{_LENGTH} tokens", metric="logit_diff", ablation="resample", edges=args.circuit_edges,
        steps=args.circuit_steps, lr=0.1, lambda_lr=None, strategy="hard_concrete", batch_size=_ROWS,
        null_size=args.circuit_null, nulls=list(NULLS), restarts=0, seed=args.seed, chunk_size=_CHUNK,
        threads=args.threads, target_sparsity=None, sizes=None)
    target, sizes = _check_options(options, graph.num_edges)
    console.log(f"\n[circuit] The shipped 2-layer attention-only model copies in context: which of its "
                f"{graph.num_edges} edges do it? ({options.steps} steps, {options.edges} edges kept, "
                f"{options.null_size} random circuits per size and null)")
    out = Path(args.out) / CIRCUIT_DIR
    data = {"pairs": _BATCHES * _ROWS, "batches": _BATCHES, "lengths": [_LENGTH]}
    results = judge_circuit(model, graph, batches, args=options, target=target, sizes=sizes, reference=None,
                            console=console, out=out, data=data, device=device)
    circuit = results["circuit"]
    return {"model": "two-layer attention-only GPT-2 trained on induction (neurosurgeon.circuits.zoo)",
            "edges": circuit["edges"], "of": graph.num_edges, "names": circuit["names"],
            "faithfulness": circuit["faithfulness"], "null": circuit["null"], "warnings": results["warnings"],
            "files": results["files"]}
