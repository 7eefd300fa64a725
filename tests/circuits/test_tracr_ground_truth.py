"""Circuit discovery on models with a known circuit: Tracr's compiled RASP programs (Lindner et al. 2023,
"Tracr: Compiled Transformers as a Laboratory for Interpretability", arXiv 2301.05062).

The shipped files (``tests/circuits/data/tracr/``, written by ``scripts/compile_tracr.py``) hold two
programs of tracr's ``lib`` over three-letter vocabularies with at most 5 tokens after BOS, the
selector each head implements, and tracr's own outputs on every one of the 363 inputs of each (the
whole input domain):

- ``reverse`` (``make_reverse(tokens)``): non-causal, so a :class:`TracrModel` (architecture row
  ``"tracr"``); 4 layers, a length head and MLP (``length = SelectorWidth(Select(tokens, tokens,
  TRUE))``), two MLPs computing ``length - indices - 1``, a head that copies the token from the
  opposite position.
- ``frac_prevs`` (``make_frac_prevs(tokens == "x")``): compiled causal, so a GPT-2 with identity
  norms; an MLP computing ``tokens == "x"`` and a head averaging it over earlier positions.

Two circuits are read from the model (:func:`program_circuit`). The compiled wiring: an edge
carries the program when its writer writes, and its reader reads, a residual feature (a RASP
variable's direction) with non-zero weights, on a path from the embeddings to the logits; every
other edge is exactly zero, so that circuit alone reproduces the model. The program's circuit,
the ground truth: that wiring without the query and key of the length head, whose TRUE selector
compares nothing (``selectors=info["selectors"]``; its attention pattern is the same with them
ablated, tested on the attention weights). ACDC's published reverse circuit leaves them out too.

Discovery is judged by ROC-AUC over the edges (ties count half) against the program's circuit, on
the task outputs (every position after BOS, as tracr decodes them). Exact patching
(:func:`patching_scores`: each edge zero-ablated alone over the whole domain) recovers it with
ROC-AUC 1.0 on both programs, and its top edges, as many as the circuit has, do the task with
accuracy 1.0. EAP, resample ablation and trained masks are measured and reported: EAP and the
masks get no gradient through tracr's flat ReLU steps, and resample ablation cannot see what
inputs of one length share.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from neurosurgeon.circuits import (
    ablation_values, circuit_forward, circuit_graph, edge_attribution, patching_scores, train_circuit,
)
from neurosurgeon.circuits.tracr import (
    TracrModel, edge_features, from_tracr, load_tracr, program_circuit, program_edges,
)
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.edges import top_k_circuit

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "circuits" / "data" / "tracr"
PROGRAMS = ("reverse", "frac_prevs")

# A score below this fraction of the largest is float64 rounding: e.g. the gradient of a softmax
# whose logits are all equal and scale together is exactly zero, and is computed as ~1e-34.
ROUNDING = 1e-12

# The circuits ACDC (Conmy et al. 2023, arXiv 2304.14997) lists for the same two programs (compiled over
# other vocabularies, to the same layers), found by ACDC under zero ablation
# (ArthurConmy/Automatic-Circuit-Discovery, acdc/tracr_task/utils.py:
# get_tracr_reverse_edges, get_tracr_proportion_edges), in our names: hook_embed is Tok Embed,
# hook_pos_embed Pos Embed, blocks.l.attn.hook_result[0] A{l}.0, hook_{q,k,v}_input .Q/.K/.V.
ACDC = {
    "reverse": {
        "A3.0->Resid End", "MLP 2->A3.0.Q", "Pos Embed->A3.0.K", "Tok Embed->A3.0.V", "MLP 1->MLP 2",
        "MLP 0->MLP 1", "Tok Embed->MLP 1", "Pos Embed->MLP 1", "A0.0->MLP 0", "Tok Embed->MLP 0",
        "Tok Embed->A0.0.V",
    },
    "frac_prevs": {
        "A1.0->Resid End", "Tok Embed->A1.0.Q", "Pos Embed->A1.0.Q", "Tok Embed->A1.0.K", "Pos Embed->A1.0.K",
        "MLP 0->A1.0.V", "Tok Embed->MLP 0",
    },
}


def _load(name: str, dtype=torch.float64):
    model, info = load_tracr(DATA / name, dtype=dtype)
    cases = load_file(str(DATA / f"{name}_outputs.safetensors"))
    lengths = sorted(int(k.split("/")[1]) for k in cases if k.startswith("inputs/"))
    batches = [(cases[f"inputs/{t}"], cases[f"outputs/{t}"], cases[f"program/{t}"]) for t in lengths]
    return model, info, batches


def _correct(info, logits: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """(N, T - 1) bool: the output after BOS decodes to the RASP program's value."""
    out = logits[:, 1:]
    if info["categorical_output"]:
        return out.argmax(-1) == program
    return (out[..., 0] - program).abs() < 1e-4


def _accuracy(model, graph, info, batches, mask=None, ablated=None) -> float:
    right = total = 0
    with torch.no_grad():
        for i, (x, _, program) in enumerate(batches):
            a = None if ablated is None else ablated[i]
            ok = _correct(info, circuit_forward(model, graph, x, mask=mask, ablated=a).output, program)
            right, total = right + int(ok.sum()), total + ok.numel()
    return right / total


def _auc(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """ROC-AUC of ``scores`` for the binary ``truth``: P(a true edge outscores a false one), ties half."""
    pos, neg = scores[truth.bool()], scores[~truth.bool()]
    wins = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    return wins.mean().item()


def _floor(scores: torch.Tensor) -> torch.Tensor:
    # Scores below ROUNDING of the largest are float64 rounding of an exact zero.
    scores = scores.abs()
    return torch.where(scores < ROUNDING * scores.max(), torch.zeros_like(scores), scores)


def _task_score(info, program, away=None):
    """EAP's score of one batch. Categorical: the summed log-probability of the program's value.
    Numerical: the output projected on ``away``, the full model's output minus the fully ablated
    one's (a squared error would have zero gradient where the model is exact, and a plain sum
    cancels over a batch ablated with its own permutation)."""
    def score(logits):
        out = logits[:, 1:]
        if info["categorical_output"]:
            return out.log_softmax(-1).gather(-1, program[..., None]).sum()
        return (out * away[:, 1:]).sum()

    return score


def _patching(model, graph, batches, ablated=None) -> torch.Tensor:
    """(edges,): exact patching, the mean |change of the outputs after BOS| when one edge alone is ablated."""
    total, count = torch.zeros(graph.num_edges, dtype=torch.float64), 0
    for i, (x, _, _) in enumerate(batches):
        a = None if ablated is None else ablated[i]
        with torch.no_grad():
            full = circuit_forward(model, graph, x, ablated=a).output[:, 1:]
        # The score is the distance from the full model's outputs: it is zero there, so the
        # patching score is minus the distance with the edge ablated.
        total = total + patching_scores(model, graph, x, lambda out: (out[:, 1:] - full).abs().sum(), ablated=a)
        count += full.numel()
    return _floor(total / count)


def _eap(model, graph, info, batches, ablated=None) -> torch.Tensor:
    """(edges,): |EAP score| of the task over the whole domain (one backward pass per length)."""
    scores = torch.zeros(graph.num_edges, dtype=torch.float64)
    for i, (x, _, program) in enumerate(batches):
        a = None if ablated is None else ablated[i]
        with torch.no_grad():
            away = circuit_forward(model, graph, x).output - circuit_forward(
                model, graph, x, mask=torch.zeros(graph.num_edges, dtype=torch.float64), ablated=a).output
        scores = scores + edge_attribution(model, graph, x, _task_score(info, program, away), ablated=a)
    return _floor(scores)


def _names(graph, mask) -> set[str]:
    return set(graph.edge_names(mask.to(torch.float64)))


@pytest.fixture(scope="module", params=PROGRAMS)
def compiled(request):
    name = request.param
    model, info, batches = _load(name)
    graph = circuit_graph(model, embeddings="split")
    wiring = program_circuit(model, graph)
    truth = program_circuit(model, graph, selectors=info["selectors"])
    effect = _patching(model, graph, batches)  # zero ablation
    return SimpleNamespace(name=name, model=model, info=info, batches=batches, graph=graph, wiring=wiring,
                           truth=truth, effect=effect)


# -- the conversion ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROGRAMS)
def test_torch_model_equals_tracr_on_every_input(name):
    model, info, batches = _load(name, dtype=torch.float32)
    assert isinstance(model, GPT2LMHeadModel if info["causal"] else TracrModel)
    for graph in (circuit_graph(model), circuit_graph(model, embeddings="split")):
        ones = torch.ones(graph.num_edges)
        for x, tracr_out, program in batches:
            with torch.no_grad():
                ours = model(x).logits
                masked = circuit_forward(model, graph, x, mask=ones).output
            assert ours.shape == tracr_out.shape
            torch.testing.assert_close(ours, tracr_out, rtol=0, atol=1e-5)
            torch.testing.assert_close(masked, ours, rtol=0, atol=1e-5)
            assert _correct(info, ours, program).all()  # tracr compiled the program right, and we read it right
    wide, _, _ = _load(name, dtype=torch.float64)
    for x, tracr_out, _ in batches:
        torch.testing.assert_close(wide(x).logits, tracr_out.double(), rtol=0, atol=1e-5)


def test_gpt2_pads_heads_and_residual_with_zeros():
    model, info, _ = _load("frac_prevs")
    c = model.config
    width = len(info["residual_labels"])
    assert c.n_embd % c.n_head == 0 and c.n_embd >= width and c.n_embd // c.n_head >= info["key_size"]
    assert not c.scale_attn_weights and c.activation_function == "relu"
    assert all(isinstance(m, torch.nn.Identity) for b in model.transformer.h for m in (b.ln_1, b.ln_2))
    assert isinstance(model.transformer.ln_f, torch.nn.Identity)
    assert model.lm_head.out_features == 1 and model.transformer.wte.weight[:, width:].abs().sum() == 0


def _random_params(*, layers=1, width=7, heads=2, key_size=3, hidden=5, vocab=6, positions=5, outputs=4, seed=0):
    # Tracr's parameter layout, (in, out) weights, with random values everywhere (biases included).
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    params = {"token_embed/embeddings": r(vocab, width), "pos_embed/embeddings": r(positions, width),
              "unembed": r(width, outputs)}
    for i in range(layers):
        for name, (n_in, n_out) in {"attn/query": (width, heads * key_size), "attn/key": (width, heads * key_size),
                                    "attn/value": (width, heads * key_size), "attn/linear": (heads * key_size, width),
                                    "mlp/linear_1": (width, hidden), "mlp/linear_2": (hidden, width)}.items():
            params[f"transformer/layer_{i}/{name}/w"] = r(n_in, n_out) / n_in ** 0.5
            params[f"transformer/layer_{i}/{name}/b"] = r(n_out) * 0.1
    return params


@pytest.mark.parametrize("width, heads, key_size", [(7, 2, 3), (5, 2, 4), (6, 3, 2)])
def test_gpt2_padding_keeps_the_computation(width, heads, key_size):
    # With one layer the last position attends to every position, causal or not, so the causal
    # GPT-2 and the non-causal TracrModel agree there: padded heads and residual change nothing.
    params = _random_params(width=width, heads=heads, key_size=key_size)
    gpt2 = from_tracr(params, num_heads=heads, key_size=key_size, causal=True, dtype=torch.float64)
    full = from_tracr(params, num_heads=heads, key_size=key_size, dtype=torch.float64)
    assert gpt2.config.n_embd % heads == 0 and gpt2.config.n_embd // heads >= key_size
    x = torch.randint(6, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gpt2(x).logits[:, -1], full(x).logits[:, -1], rtol=0, atol=1e-12)
        assert not torch.allclose(gpt2(x).logits[:, 0], full(x).logits[:, 0])  # and it is causal elsewhere
        for model in (gpt2, full):
            g = circuit_graph(model)
            torch.testing.assert_close(circuit_forward(model, g, x, mask=torch.ones(g.num_edges, dtype=torch.float64)
                                                       ).output, model(x).logits, rtol=0, atol=1e-12)


def test_program_circuit_keeps_only_paths_from_the_embeddings_to_the_logits():
    # Two layers over residual features 0..5, tokens writing features 0 and 1. A0.0 reads 0 and writes
    # 2, which nothing reads: a dead end. MLP 0 has no input weights but writes 3, which MLP 1 (no
    # output weights) and the logits read: with no input and no bias it writes zero. A1.0 reads 1 as
    # query, key and value and writes 4, which the logits read: the only path.
    width, key_size = 6, 2
    params = {k: torch.zeros_like(v) for k, v in _random_params(layers=2, width=width, heads=1, key_size=key_size,
                                                                   vocab=3, outputs=2).items()}
    params["token_embed/embeddings"][1, 0] = params["token_embed/embeddings"][2, 1] = 1.0
    params["transformer/layer_0/attn/value/w"][0, 0] = 1.0
    params["transformer/layer_0/attn/linear/w"][0, 2] = 1.0
    params["transformer/layer_0/mlp/linear_2/w"][0, 3] = 1.0
    for name in ("query", "key", "value"):
        params[f"transformer/layer_1/attn/{name}/w"][1, 0] = 1.0
    params["transformer/layer_1/attn/linear/w"][0, 4] = 1.0
    params["transformer/layer_1/mlp/linear_1/w"][3, 0] = 1.0  # reads MLP 0's feature, writes nothing
    params["unembed"][4, 0] = params["unembed"][3, 1] = 1.0
    model = from_tracr(params, num_heads=1, key_size=key_size, dtype=torch.float64)
    graph = circuit_graph(model, embeddings="split")
    carried = _names(graph, program_edges(model, graph).double())
    assert carried == {"Tok Embed->A0.0.V", "Tok Embed->A1.0.Q", "Tok Embed->A1.0.K", "Tok Embed->A1.0.V",
                       "MLP 0->MLP 1", "MLP 0->Resid End", "A1.0->Resid End"}
    assert _names(graph, program_circuit(model, graph)) == {"Tok Embed->A1.0.Q", "Tok Embed->A1.0.K",
                                                            "Tok Embed->A1.0.V", "A1.0->Resid End"}
    x = torch.tensor([[1, 2, 2, 1]])
    torch.testing.assert_close(circuit_forward(model, graph, x, mask=program_circuit(model, graph).double()).output,
                               model(x).logits, rtol=0, atol=1e-12)


def test_from_tracr_refuses_bad_parameters():
    params = load_file(str(DATA / "reverse.safetensors"))
    key_size = json.loads((DATA / "reverse.json").read_text())["key_size"]
    with pytest.raises(ValueError, match=r"num_heads 2 \* key_size 12 must equal the query width 12"):
        from_tracr(params, num_heads=2, key_size=key_size)
    with pytest.raises(ValueError, match="params has no 'unembed'"):
        from_tracr({k: v for k, v in params.items() if k != "unembed"}, num_heads=1, key_size=key_size)
    with pytest.raises(ValueError, match=r"params lacks \['transformer/layer_3/mlp/linear_2/b'\]"):
        from_tracr({k: v for k, v in params.items() if k != "transformer/layer_3/mlp/linear_2/b"}, num_heads=1,
                   key_size=key_size)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 1.0"):
        from_tracr(params, num_heads=1.0, key_size=key_size)
    with pytest.raises(TypeError, match="causal must be a bool"):
        from_tracr(params, num_heads=1, key_size=key_size, causal="no")


# -- the ground truth -----------------------------------------------------------------------------------

# The selectors scripts/compile_tracr.py read from tracr's graph of each program: make_reverse's
# length and reverse heads, make_frac_prevs's average over earlier positions.
SELECTORS = {
    "reverse": {"A0.0": dict(operation="SelectorWidth", variable="length_5", query="tokens", key="tokens",
                             predicate="TRUE"),
                "A3.0": dict(operation="Aggregate", variable="reverse_1", query="opp_idx-1_3", key="indices",
                             predicate="EQ")},
    "frac_prevs": {"A1.0": dict(operation="Aggregate", variable="frac_prevs_1", query="indices", key="indices",
                                predicate="LEQ")},
}


def test_the_compiled_heads_record_their_rasp_selectors(compiled):
    c = compiled
    assert c.info["selectors"] == SELECTORS[c.name]
    used = {c.graph.writers[w] for w in c.graph.writer_of_edge()[c.wiring.bool()].tolist()}
    assert {w for w in used if w.startswith("A")} == set(c.info["selectors"])  # every head that works has one


def test_program_circuit_follows_the_rasp_variables(compiled):
    c = compiled
    labels = c.info["residual_labels"]
    features = edge_features(c.model, c.graph)
    assert not features[:, len(labels):].any()  # GPT-2's padding carries nothing
    variables = {}
    for e in torch.nonzero(c.wiring).flatten().tolist():
        carried = {labels[f].split(":")[0] for f in torch.nonzero(features[e, :len(labels)]).flatten().tolist()}
        variables[c.graph.edges[e]] = sorted(carried)
    print(f"\n{c.name}: {len(variables)} of {c.graph.num_edges} edges carry the program")
    for edge, carried in variables.items():
        print(f"  {edge:24s} {', '.join(carried)}")
    # The embeddings write tokens (and tracr's constant 'one') and indices; the logits read only
    # the program's output variable; every edge of the circuit carries something.
    for edge, carried in variables.items():
        writer = edge.split("->")[0]
        if writer == "Tok Embed":
            assert set(carried) <= {"tokens", "one"}
        if writer == "Pos Embed":
            assert set(carried) == {"indices"}
        if edge.endswith("Resid End"):
            assert carried == [c.info["output_label"]]
        assert carried
    assert bool((c.wiring.bool() <= program_edges(c.model, c.graph)).all())
    # ACDC's circuit for the same program lies inside the program's circuit, itself inside the wiring.
    assert ACDC[c.name] <= _names(c.graph, c.truth) <= set(variables)


def test_the_program_circuit_drops_the_query_and_key_of_a_true_selector_width(compiled):
    c = compiled
    dropped = _names(c.graph, c.wiring - c.truth)
    assert bool((c.truth <= c.wiring).all())
    if c.name == "reverse":
        # length = SelectorWidth(Select(tokens, tokens, TRUE)) compares nothing.
        assert dropped == {"Tok Embed->A0.0.Q", "Tok Embed->A0.0.K"}
    else:
        assert dropped == set()


def _pattern(model, graph, x, head: str, dropped=frozenset()) -> torch.Tensor:
    """(B, T, T): the attention pattern of ``head`` ("A{layer}.{head}") on ``x``, from the model's own
    projections, its query and key reading every writer before its layer but the edges ``dropped``
    (zero-ablated)."""
    layer, h = (int(i) for i in head[1:].split("."))
    first = graph.first_writer(layer)
    with torch.no_grad():
        written = circuit_forward(model, graph, x, return_writers=True).writers[:first]

        def read(reader):
            keep = torch.tensor([f"{w}->{reader}" not in dropped for w in graph.writers[:first]], dtype=written.dtype)
            return torch.einsum("w,wbtd->btd", keep, written)

        if isinstance(model, TracrModel):
            attn = model.layers[layer].self_attn
            d, scale = attn.head_dim, attn.head_dim ** -0.5
            q, k = attn.q_proj(read(f"{head}.Q")), attn.k_proj(read(f"{head}.K"))
        else:  # GPT-2: one projection [q | k | v], identity norms, tracr's scale in the queries
            attn, n = model.transformer.h[layer].attn, model.config.n_embd
            d, scale = n // model.config.n_head, 1.0
            q, k = attn.c_attn(read(f"{head}.Q"))[..., :n], attn.c_attn(read(f"{head}.K"))[..., n:2 * n]
        scores = q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(-1, -2) * scale
        if graph.architecture.causal:
            t = x.shape[1]
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), torch.finfo(scores.dtype).min)
        return scores.softmax(-1)


def test_a_true_selector_width_attends_alike_with_its_query_and_key_zero_ablated(compiled):
    # The rule program_circuit applies, checked on the attention weights over the whole domain: a
    # head whose selector compares something attends elsewhere once its query and key read nothing.
    c = compiled
    for head, selector in c.info["selectors"].items():
        ablated = {f"{w}->{head}.{r}" for w in c.graph.writers for r in "QK"}
        for x, _, _ in c.batches:
            clean, blind = _pattern(c.model, c.graph, x, head), _pattern(c.model, c.graph, x, head, ablated)
            torch.testing.assert_close(clean.sum(-1), torch.ones_like(clean.sum(-1)), rtol=0, atol=1e-12)
            if selector["predicate"] == "TRUE":
                # After BOS, every key scores alike either way. At BOS, which no output decodes,
                # it attends to BOS alone, and uniformly once ablated.
                torch.testing.assert_close(blind[:, 1:], clean[:, 1:], rtol=0, atol=1e-12)
                assert not torch.allclose(blind[:, 0], clean[:, 0])
            else:
                assert (blind[:, 1:] - clean[:, 1:]).abs().amax((1, 2)).min() > 0.1
    assert any(s["predicate"] == "TRUE" for s in c.info["selectors"].values()) == (c.name == "reverse")


def test_program_circuit_with_selectors_drops_what_only_an_uncompared_selector_reads():
    model, info, _ = _load("reverse")
    graph = circuit_graph(model, embeddings="split")
    # Were A3.0's selector a TRUE selector width, nothing would read opp_idx, so MLP 2, MLP 1 and
    # the length head behind it would drop out with its query and key. An Aggregate over a TRUE
    # selector keeps them: tracr's BOS fallback needs its query and key.
    only_v = program_circuit(model, graph, selectors={"A3.0": dict(operation="SelectorWidth", predicate="TRUE")})
    assert _names(graph, only_v) == {"Tok Embed->A3.0.V", "A3.0->Resid End"}
    aggregate = program_circuit(model, graph, selectors={"A0.0": dict(operation="Aggregate", predicate="TRUE")})
    assert torch.equal(aggregate, program_circuit(model, graph))
    assert torch.equal(program_circuit(model, graph, selectors={}), program_circuit(model, graph))
    with pytest.raises(ValueError, match="selectors names 'A4.0', which is no attention head"):
        program_circuit(model, graph, selectors={"A4.0": dict(operation="Aggregate", predicate="EQ")})
    with pytest.raises(ValueError, match="selectors names 'MLP 0', which is no attention head"):
        program_circuit(model, graph, selectors={"MLP 0": dict(operation="Aggregate", predicate="EQ")})
    with pytest.raises(ValueError, match=r"selectors\['A0.0'\] must hold a 'predicate'"):
        program_circuit(model, graph, selectors={"A0.0": dict(operation="Aggregate", predicate="==")})
    with pytest.raises(ValueError, match=r"selectors\['A0.0'\] must hold an 'operation'"):
        program_circuit(model, graph, selectors={"A0.0": dict(predicate="TRUE")})
    with pytest.raises(ValueError, match="selectors must map head names"):
        program_circuit(model, graph, selectors=[("A0.0", "TRUE")])


def test_program_circuit_alone_computes_the_program(compiled):
    c = compiled
    for x, _, program in c.batches:
        with torch.no_grad():
            full = circuit_forward(c.model, c.graph, x).output
            wiring = circuit_forward(c.model, c.graph, x, mask=c.wiring.double()).output  # every other edge ablated
            truth = circuit_forward(c.model, c.graph, x, mask=c.truth.double()).output
        torch.testing.assert_close(wiring, full, rtol=0, atol=1e-12)
        torch.testing.assert_close(truth[:, 1:], full[:, 1:], rtol=0, atol=1e-12)  # after BOS: the task outputs
    assert _accuracy(c.model, c.graph, c.info, c.batches) == 1.0
    assert _accuracy(c.model, c.graph, c.info, c.batches, mask=c.truth.double()) == 1.0
    # without it, the program is gone
    assert _accuracy(c.model, c.graph, c.info, c.batches, mask=1 - c.truth.double()) < 0.5


def test_exact_patching_recovers_the_program_circuit(compiled):
    # The effect of zero-ablating one edge by itself, over the whole input domain.
    c = compiled
    assert c.effect[c.truth == 0].max() == 0  # outside the circuit nothing moves
    assert c.effect[c.truth == 1].min() > 0  # and every edge of it does
    auc, auc_wiring = _auc(c.effect, c.truth), _auc(c.effect, c.wiring)
    k = int(c.truth.sum())
    found = top_k_circuit(c.effect, k)
    accuracy = _accuracy(c.model, c.graph, c.info, c.batches, mask=found)
    faint = _names(c.graph, c.truth * (c.effect < 1e-5))
    print(f"\n{c.name}: exact patching (zero ablation) ROC-AUC {auc:.4f} for the program circuit ({k} edges), "
          f"{auc_wiring:.4f} for the compiled wiring ({int(c.wiring.sum())}); its top {k} edges do the task with "
          f"accuracy {accuracy:.4f}; effect below 1e-5 {sorted(faint)}")
    assert auc == 1.0 and torch.equal(found, c.truth) and accuracy == 1.0
    # The wiring's extra edges are inert: they tie with the edges outside it.
    inert = c.wiring.sum().item() - k
    assert auc_wiring == pytest.approx((k + 0.5 * inert) / c.wiring.sum().item(), abs=1e-12)
    # What ACDC leaves out of the program circuit is the attention's BOS fallback (query 'one'
    # against key 'tokens:BOS'), which never wins while a position is selected.
    assert _names(c.graph, c.truth) - ACDC[c.name] <= faint


def test_eap_under_zero_ablation(compiled):
    c = compiled
    scores = _eap(c.model, c.graph, c.info, c.batches)
    assert scores[c.truth == 0].max() == 0  # exactly: those readers' weights on those features are zero
    blind = _names(c.graph, c.truth * (scores == 0))
    auc = _auc(scores, c.truth)
    found = top_k_circuit(scores, int((scores > 0).sum()))
    accuracy = _accuracy(c.model, c.graph, c.info, c.batches, mask=found)
    print(f"\n{c.name}: EAP (zero ablation) ROC-AUC {auc:.4f} for the program circuit; zero gradient on "
          f"{sorted(blind)}; the {int(found.sum())} edges it scores do the task with accuracy {accuracy:.4f}")
    # Every program edge it scores outranks every other edge; the ones it cannot see tie with them.
    assert auc == pytest.approx((c.truth.sum().item() - 0.5 * len(blind)) / c.truth.sum().item(), abs=1e-12)
    if c.name == "frac_prevs":
        assert blind == set() and auc == 1.0 and torch.equal(found, c.truth) and accuracy == 1.0
    else:
        # MLP 0 turns the length head's 1 / (length + 1) into the length with ReLU steps (tracr's
        # discretising MLP), flat at every value it meets, so the length head's value input and
        # output have zero gradient, though removing either breaks the task (exact patching sees it).
        assert blind == {"Tok Embed->A0.0.V", "A0.0->MLP 0"} and auc < 1.0
        assert scores[c.graph.edge_mask(["Tok Embed->A0.0.Q", "Tok Embed->A0.0.K"]).bool()].max() == 0
        assert c.effect[c.graph.edge_index("A0.0->MLP 0")] > 0.1 and accuracy < 1.0


def test_resample_ablation_misses_what_inputs_of_one_length_share(compiled):
    # Resample ablation pairs each input with another of the same length (the one before it in order),
    # so a writer whose output depends only on the positions (Pos Embed, and in reverse the
    # length) writes the same on both: its edges have no effect, though the program needs them.
    c = compiled
    ablated, same = [], torch.ones(len(c.graph.writers), dtype=torch.bool)
    for x, _, _ in c.batches:
        a = ablation_values(c.model, c.graph, "resample", x, corrupted=x.roll(1, 0))
        clean = circuit_forward(c.model, c.graph, x, return_writers=True).writers
        same &= (clean == a).flatten(1).all(1)
        ablated.append(a)
    effect = _patching(c.model, c.graph, c.batches, ablated)
    eap = _eap(c.model, c.graph, c.info, c.batches, ablated)
    on_same = same[c.graph.writer_of_edge()]
    assert effect[on_same].max() == 0 and eap[on_same].max() == 0
    assert effect[c.truth == 0].max() == 0 and eap[c.truth == 0].max() == 0
    missed, blind = _names(c.graph, c.truth * (effect == 0)), _names(c.graph, c.truth * (eap == 0))
    auc_patch, auc_eap = _auc(effect, c.truth), _auc(eap, c.truth)
    print(f"\n{c.name}: resample ablation ROC-AUC {auc_patch:.4f} (exact patching), {auc_eap:.4f} (EAP) for the "
          f"program circuit; no effect on {sorted(missed)}; zero gradient on {sorted(blind)}")
    shared = {c.graph.writers[w] for w in torch.nonzero(same).flatten().tolist()}
    length = {"A0.0", "MLP 0", "MLP 1", "MLP 2"} if c.name == "reverse" else set()  # length, opp_idx, opp_idx-1
    assert {"Pos Embed"} | length <= shared and "Tok Embed" not in shared
    assert _names(c.graph, c.truth * on_same) <= missed
    n = c.truth.sum().item()
    assert auc_patch == pytest.approx((n - 0.5 * len(missed)) / n, abs=1e-12) and auc_patch < 1.0
    assert auc_eap == pytest.approx((n - 0.5 * len(blind)) / n, abs=1e-12)


@pytest.mark.slow
def test_trained_edge_masks_on_reverse_under_zero_ablation():
    model, info, batches = _load("reverse")
    graph = circuit_graph(model, embeddings="split")
    truth = program_circuit(model, graph, selectors=info["selectors"])
    # One task example per (input, position after BOS): a fixed sample of 64 of each length.
    data, gen = [], torch.Generator().manual_seed(0)
    for x, _, program in batches:
        t = x.shape[1]
        ids, answers = x.repeat(t - 1, 1), program.T.reshape(-1)
        positions = torch.arange(1, t).repeat_interleave(len(x))
        keep = torch.randperm(len(ids), generator=gen)[:64]
        data.append(dict(input_ids=ids[keep], positions=positions[keep], answers=answers[keep]))
    out = train_circuit(model, graph, data, key=nr.key(0), steps=300, metric="kl", ablation="zero", l0_lambda=5e-3,
                        lr=0.05, mask_init_percentage=0.95)
    theta = out.mask.theta.detach()
    # An edge outside the circuit never gets a task gradient, so every one of them ends where the
    # L0 penalty alone takes it: one value, the floor. Program edges with zero gradient end there too.
    floor = theta[truth == 0]
    assert torch.all(floor == floor[0])
    above, at = theta > floor[0], theta == floor[0]
    assert bool((above <= truth.bool()).all())  # every edge it keeps is a program edge
    auc = _auc(theta, truth)
    kept = above.to(torch.float64)
    accuracy = _accuracy(model, graph, info, batches, mask=kept)
    print(f"\nreverse: trained masks (zero ablation) ROC-AUC {auc:.4f} for the program circuit; at the floor "
          f"{sorted(_names(graph, truth * at))}, below it {sorted(_names(graph, truth * ~(above | at)))}; the "
          f"{int(kept.sum())} edges above it do the task with accuracy {accuracy:.4f}")
    assert auc == pytest.approx((int(above.sum()) + 0.5 * int((truth.bool() & at).sum())) / truth.sum().item())
    # The discretising MLP 0 gives A0.0->MLP 0 no gradient (test_eap_under_zero_ablation), so the
    # masks drop it; without it MLP 0 reads a zero length signal and the circuit fails on shorter inputs.
    assert not above[graph.edge_index("A0.0->MLP 0")] and accuracy < 1.0


# -- the generator ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_tracr_regenerates_the_shipped_files(tmp_path):
    pytest.importorskip("tracr")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_tracr.py"), "--out", str(tmp_path)], check=True,
                   env=env, cwd=ROOT, capture_output=True)
    for name in PROGRAMS:
        new, shipped = (json.loads((d / f"{name}.json").read_text()) for d in (tmp_path, DATA))
        new.pop("compiler"), shipped.pop("compiler")  # the tracr and jax versions
        assert new == shipped
        # The weights are built by tracr in numpy: bit for bit. The outputs are jax's forward: its
        # rounding may change between jax versions.
        new, shipped = load_file(str(tmp_path / f"{name}.safetensors")), load_file(str(DATA / f"{name}.safetensors"))
        assert new.keys() == shipped.keys() and all(torch.equal(new[k], shipped[k]) for k in shipped)
        new = load_file(str(tmp_path / f"{name}_outputs.safetensors"))
        shipped = load_file(str(DATA / f"{name}_outputs.safetensors"))
        assert new.keys() == shipped.keys()
        for key in shipped:
            torch.testing.assert_close(new[key], shipped[key], rtol=0, atol=1e-6)
