"""The circuit forward is exact: every mask at 1 is the model's own forward, every mask at 0 is
the fully ablated model, a node mask is its tied edge mask, and padding behaves as the model's."""

import pytest
import torch
from circuit_zoo import PRE_NORM, build, ids, reference_output

from neurosurgeon.circuits import ablation_values, circuit_forward, circuit_graph
from neurosurgeon.functional.edges import tie_nodes

# Relative error bounds of the issue: float32 1e-6, float64 1e-12.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("family", PRE_NORM)
def test_all_ones_is_the_models_forward(family, dtype):
    model = build(family, dtype=dtype)
    g, x = circuit_graph(model, embeddings="split"), ids()
    ref = reference_output(model, x)
    assert ref.abs().max() > 0.1
    ones = torch.ones(g.num_edges, dtype=dtype)
    # Ablated values that are not zero (a mean over other prompts), so "1 * h + 0 * a" is exercised.
    a = ablation_values(model, g, "mean", x, reference=ids(8, 7, seed=5))
    for out in (circuit_forward(model, g, x).output, circuit_forward(model, g, x, mask=ones, ablated=a).output,
                circuit_forward(model, g, x, node_mask=ones[:len(g.writers)], ablated=a).output):
        assert out.dtype == dtype and _rel(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_bert_node_masks_are_exact(dtype):
    model = build("bert", dtype=dtype)
    g, x = circuit_graph(model), ids()
    ref = reference_output(model, x)
    ones = torch.ones(len(g.writers), dtype=dtype)
    assert _rel(circuit_forward(model, g, x, node_mask=ones).output, ref) <= TOL[dtype]


def test_bert_edges_refused_with_the_reason():
    model = build("bert")
    g = circuit_graph(model)
    with pytest.raises(ValueError, match="pre-norm.*re-normalises.*not additive"):
        circuit_forward(model, g, ids(), mask=torch.ones(g.num_edges))


def _final(model, family):
    # The model's own final norm and unembedding, by attribute, not through the table.
    if family.startswith("gpt2"):
        base = model.transformer if family == "gpt2" else model
        return lambda x: model.lm_head(base.ln_f(x)) if family == "gpt2" else base.ln_f(x)
    if family.startswith("gpt_neox"):
        return lambda x: model.lm_head(model.gpt_neox.final_layer_norm(x))
    return lambda x: model.lm_head(model.model.norm(x))


def _attention_biases(model, family):
    if family.startswith("gpt2"):
        base = model.transformer if family == "gpt2" else model
        return sum(block.attn.c_proj.bias for block in base.h)
    if family.startswith("gpt_neox"):
        return sum(layer.attention.dense.bias for layer in model.gpt_neox.layers)
    return sum(layer.self_attn.o_proj.bias for layer in model.model.layers)


@pytest.mark.parametrize("kind", ["zero", "mean"])
@pytest.mark.parametrize("family", PRE_NORM)
def test_all_zeros_is_the_fully_ablated_model(family, kind):
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, kind, x, reference=ids(8, 7, seed=5))
    zeros = torch.zeros(g.num_edges, dtype=torch.float64)
    out = circuit_forward(model, g, x, mask=zeros, ablated=a, return_writers=True)
    # The logits read only ablated values and the attention biases, which belong to no writer.
    ablated_sum = 0 if a is None else a.sum(0)[0]
    expected = _final(model, family)(ablated_sum + _attention_biases(model, family)).expand_as(out.output)
    assert _rel(out.output, expected) <= 1e-12
    # Every reader sees only ablated values: nothing after the embeddings depends on the input.
    other = circuit_forward(model, g, ids(seed=9), mask=zeros, ablated=a, return_writers=True)
    e = len(g.embeddings)
    assert torch.equal(out.writers[e:], other.writers[e:]) and torch.equal(out.output, other.output)
    assert not torch.equal(out.writers[:e], other.writers[:e])


@pytest.mark.parametrize("family", PRE_NORM)
def test_node_mask_equals_its_tied_edge_mask(family):
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model, embeddings="split"), ids()
    node = torch.rand(len(g.writers), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=4))
    tied = tie_nodes(node, g.writer_of_edge())
    by_node = circuit_forward(model, g, x, node_mask=node, ablated=a).output
    by_edge = circuit_forward(model, g, x, mask=tied, ablated=a).output
    assert _rel(by_node, by_edge) <= 1e-12


@pytest.mark.parametrize("family", PRE_NORM)
def test_recording_gradients_or_not_computes_the_same(family):
    # Without autograd the forward writes every writer into one stack and each reader group's inputs
    # into one buffer; with it, chunks and inputs stay apart (the backward reads them). The two sum
    # the same terms in another grouping: equal up to rounding.
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=4))
    mask = torch.rand(g.num_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = circuit_forward(model, g, x, mask=mask, ablated=a).output
    recorded = circuit_forward(model, g, x, mask=mask.clone().requires_grad_(), ablated=a).output
    assert recorded.requires_grad and _rel(recorded.detach(), plain) <= 1e-12


@pytest.mark.parametrize("over", ["mask", "ablated", "input_ids"])
@pytest.mark.parametrize("family", PRE_NORM)
def test_forward_without_autograd_vmaps_over_any_input(family, over):
    # The stack and the readers' buffer are made batched by whatever is batched (the first heads'
    # write): vmap over masks, ablated values or inputs equals a loop.
    model = build(family, dtype=torch.float64)
    g, k = circuit_graph(model), 3
    xs = torch.stack([ids(seed=s) for s in range(k)])
    a = torch.stack([ablation_values(model, g, "resample", xs[0], corrupted=ids(seed=10 + s)) for s in range(k)])
    masks = torch.rand(k, g.num_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    args = {"mask": masks, "ablated": a, "input_ids": xs}
    fixed = {name: v[0] for name, v in args.items() if name != over}

    def run(v):
        return circuit_forward(model, g, **{**fixed, over: v}).output

    with torch.no_grad():
        batched = torch.func.vmap(run)(args[over])
        loop = torch.stack([run(v) for v in args[over]])
    assert _rel(batched, loop) <= 1e-12


def test_one_edge_moves_only_its_reader():
    # Cutting one edge into the logits changes the final stream by exactly h_w - a_w.
    model = build("gpt2_base", dtype=torch.float64)
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=4))
    mask = torch.ones(g.num_edges, dtype=torch.float64)
    i = g.edge_index("A1.2->Resid End")
    mask[i] = 0
    ln_f = model.ln_f
    full = circuit_forward(model, g, x, ablated=a, return_writers=True)
    cut = circuit_forward(model, g, x, mask=mask, ablated=a)
    w = g.writers.index("A1.2")
    # ln_f is invertible here only through its input; compare the inputs via the writers instead.
    stream = full.writers.sum(0) + model.h[0].attn.c_proj.bias + model.h[1].attn.c_proj.bias
    assert _rel(ln_f(stream), full.output) <= 1e-12
    assert _rel(ln_f(stream - full.writers[w] + a[w]), cut.output) <= 1e-12


def test_padding_matches_the_model():
    model = build("gpt2")
    g, x = circuit_graph(model), ids(2, 6)
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    ref = model(x, attention_mask=am).logits
    out = circuit_forward(model, g, x, mask=torch.ones(g.num_edges), attention_mask=am).output
    keep = am.bool()
    assert _rel(out[keep], ref[keep]) <= 1e-6


def test_bad_inputs_name_the_argument():
    model = build("gpt2")
    g = circuit_graph(model)
    with pytest.raises(ValueError, match=r"mask must have shape \(110,\)"):
        circuit_forward(model, g, ids(), mask=torch.ones(7))
    with pytest.raises(ValueError, match="node_mask must have shape"):
        circuit_forward(model, g, ids(), node_mask=torch.ones(g.num_edges))
    with pytest.raises(ValueError, match="give one of mask= \(edges\), node_mask= \(writers\)"):
        circuit_forward(model, g, ids(), mask=torch.ones(g.num_edges), node_mask=torch.ones(len(g.writers)))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        circuit_forward(model, g, torch.rand(2, 3))
    with pytest.raises(ValueError, match="ablated must have shape"):
        circuit_forward(model, g, ids(), mask=torch.ones(g.num_edges), ablated=torch.zeros(3, 1, 1, 32))


def test_a_fresh_graphs_edge_forward_compiles_as_one_graph():
    # The graph's derived tables are filled when it is made, not on first use inside a compiled
    # step (a lazily cached property takes a lock that torch.compile cannot trace).
    model = build("gpt2")
    g, x = circuit_graph(model), ids()
    mask = torch.rand(g.num_edges, generator=torch.Generator().manual_seed(0))

    def run(m):
        return circuit_forward(model, g, x, mask=m).output

    with torch.no_grad():
        compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(mask)
        assert _rel(compiled, run(mask)) <= 1e-6
