"""Finer units: a head's value dimensions and an MLP's neurons as nodes of their own. A unit mask
is a node mask at that granularity: every unit kept is the model's forward, a unit mask tied over
its writers is the node mask, one unit removed by zero ablation is its weight column removed, and
every unit removed under resample ablation is the model run on the corrupted inputs."""

import copy
import dataclasses

import pytest
import torch
from circuit_zoo import PRE_NORM, build, ids, reference_output

from neurosurgeon.circuits import (
    FINE_UNITS, CircuitMask, UnitAblation, ablation_values, circuit_forward, circuit_graph, edge_attribution,
    evaluate_circuits, learned_ablation, random_circuits, train_circuit,
)
from neurosurgeon.functional import random as nr
from neurosurgeon.model.architectures import ARCHITECTURES

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
FAMILIES = [*PRE_NORM, "bert"]
BOTH = ("value", "neuron")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- the graph --------------------------------------------------------------------------------------
def test_units_are_counted_named_and_ordered_writer_by_writer():
    model = build("gpt2")  # 2 layers, 4 heads of d = 8, MLPs of 128 neurons
    g = circuit_graph(model, units=BOTH)
    assert (g.head_dim, g.mlp_width) == (8, 128)
    assert g.num_units == 1 + 2 * (4 * 8 + 128) and g.num_activations == 2 * (4 * 8 + 128)
    assert g.unit_names[:3] == ("Resid Start", "A0.0.v0", "A0.0.v1") and g.unit_names[-1] == "MLP 1.n127"
    writer = g.writer_of_unit()
    # Each unit's name starts with its writer's, and a writer's units are contiguous.
    assert all(name.split(".v")[0].split(".n")[0] == g.writers[w] for name, w in zip(g.unit_names, writer.tolist()))
    assert torch.equal(writer, writer.sort().values)
    assert g.unit_names[slice(*g.unit_span(1, "mlp"))] == tuple(f"MLP 1.n{j}" for j in range(128))
    assert g.unit_names[slice(*g.unit_span(1, "heads"))][8] == "A1.1.v0"
    # Edges stay between whole writers.
    assert g.num_edges == circuit_graph(model).num_edges

    neurons = circuit_graph(model, units="neuron")
    assert neurons.units == ("neuron",) and neurons.num_units == 1 + 2 * (4 + 128)
    assert neurons.unit_names[1:6] == ("A0.0", "A0.1", "A0.2", "A0.3", "MLP 0.n0")
    assert circuit_graph(model).num_units == len(circuit_graph(model).writers)


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_come_from_each_familys_weights(family):
    model = build(family)
    g = circuit_graph(model, units=BOTH)
    assert (g.head_dim, g.mlp_width) == (8, 128 if family.startswith("gpt2") else 64)


def test_bad_units_are_refused():
    model = build("gpt2")
    with pytest.raises(ValueError, match=r"units must be distinct names from \['value', 'neuron'\], got \('axon',\)"):
        circuit_graph(model, units="axon")
    with pytest.raises(ValueError, match="distinct"):
        circuit_graph(model, units=("value", "value"))
    no_down = dataclasses.replace(ARCHITECTURES["gpt2"], mlp_down=None)
    with pytest.raises(ValueError, match="names no mlp_down.*give the row mlp_down and mlp_neurons"):
        circuit_graph(model, units="neuron", architecture=no_down)
    assert circuit_graph(model, units="value", architecture=no_down).head_dim == 8


# -- exactness --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_unit_kept_is_the_models_forward(family, dtype):
    model = build(family, dtype=dtype)
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, "mean", x, reference=ids(8, 7, seed=5))
    assert isinstance(a, UnitAblation) and a.activations.shape == (1, 1, g.num_activations)
    out = circuit_forward(model, g, x, unit_mask=torch.ones(g.num_units, dtype=dtype), ablated=a)
    assert _rel(out.output, reference_output(model, x)) <= TOL[dtype]


@pytest.mark.parametrize("kind", ["mean", "mean per position", "resample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_unit_mask_tied_over_its_writers_is_the_node_mask(family, kind):
    # A writer's output is linear in its split activations, so its units' mean or corrupted
    # activations write its mean or corrupted output: tied units equal the node, and (pre-norm)
    # the tied edge mask.
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, kind.split()[0], x, reference=ids(8, 7, seed=5), corrupted=ids(seed=9),
                        per_position=kind.endswith("position"))
    assert a.activations.shape[1] == (1 if kind == "mean" else x.shape[1])
    node = torch.rand(len(g.writers), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    units = circuit_forward(model, g, x, unit_mask=node[g.writer_of_unit()], ablated=a).output
    nodes = circuit_forward(model, g, x, node_mask=node, ablated=a).output
    assert _rel(units, nodes) <= 1e-12 and _rel(units, reference_output(model, x)) > 1e-3
    if family != "bert":
        edges = circuit_forward(model, g, x, mask=node[g.writer_of_edge()], ablated=a).output
        assert _rel(units, edges) <= 1e-12


def _down_and_out(model, family, layer):
    # The MLP's output projection and the attention output projection, by attribute (not the table),
    # with the axis of their input features in the weight.
    if family.startswith("gpt2"):
        block = model.transformer.h[layer]
        return (block.mlp.c_proj, 0), (block.attn.c_proj, 0)
    if family.startswith("gpt_neox"):
        block = model.gpt_neox.layers[layer]
        return (block.mlp.dense_4h_to_h, 1), (block.attention.dense, 1)
    block = model.model.layers[layer]
    return (block.mlp.down_proj, 1), (block.self_attn.o_proj, 1)


@pytest.mark.parametrize("writers", ["mlp", "heads"])
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama_gqa"])
def test_a_zero_ablated_unit_is_its_weight_column_removed(family, writers):
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model, units=BOTH), ids()
    start, stop = g.unit_span(1, writers)
    j = 5 if writers == "mlp" else 2 * g.head_dim + 3  # neuron 5; value dimension 3 of head 2
    mask = torch.ones(g.num_units, dtype=torch.float64)
    mask[start + j] = 0
    out = circuit_forward(model, g, x, unit_mask=mask).output
    edited = copy.deepcopy(model)
    (down, down_axis), (o, o_axis) = _down_and_out(edited, family, 1)
    module, axis = (down, down_axis) if writers == "mlp" else (o, o_axis)
    with torch.no_grad():
        module.weight.select(axis, j).zero_()
    assert _rel(out, reference_output(edited, x)) <= 1e-12 and _rel(out, reference_output(model, x)) > 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_every_unit_resampled_is_the_model_on_the_corrupted_inputs(family):
    model = build(family, dtype=torch.float64)
    g, x, corrupted = circuit_graph(model, units=BOTH), ids(), ids(seed=9)
    a = ablation_values(model, g, "resample", x, corrupted=corrupted)
    out = circuit_forward(model, g, x, unit_mask=torch.zeros(g.num_units, dtype=torch.float64), ablated=a).output
    assert _rel(out, reference_output(model, corrupted)) <= 1e-12


def test_compiled_unit_forward_equals_eager():
    # The neurons are gated between the model's own modules (no hook), so a whole unit-masked
    # forward compiles as one graph.
    model = build("llama_gqa")
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=9))
    mask = torch.rand(g.num_units, generator=torch.Generator().manual_seed(0))

    def run(m):
        return circuit_forward(model, g, x, unit_mask=m, ablated=a).output

    with torch.no_grad():
        compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(mask)
        assert _rel(compiled, run(mask)) <= 1e-6


# -- transforms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("over", ["unit_mask", "activations"])
def test_vmap_over_unit_masks_or_ablated_activations_equals_a_loop(over):
    model = build("llama_gqa", dtype=torch.float64)
    g, x, k = circuit_graph(model, units=BOTH), ids(), 3
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=9))
    masks = torch.rand(k, g.num_units, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    acts = torch.stack([a.activations + s for s in range(k)])

    def run(v):
        mask, act = (v, a.activations) if over == "unit_mask" else (masks[0], v)
        return circuit_forward(model, g, x, unit_mask=mask, ablated=UnitAblation(a.writers, act)).output

    values = masks if over == "unit_mask" else acts
    with torch.no_grad():
        assert _rel(torch.func.vmap(run)(values), torch.stack([run(v) for v in values])) <= 1e-12


def test_grad_of_the_unit_mask_equals_autograd():
    model = build("gpt_neox", dtype=torch.float64)
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, "mean", x, reference=ids(8, 7, seed=5))
    mask = torch.rand(g.num_units, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def loss(m):
        return circuit_forward(model, g, x, unit_mask=m, ablated=a).output.square().mean()

    m = mask.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(m), m)
    got = torch.func.grad(loss)(mask)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14) and bool((expected != 0).all())


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_attribution_at_every_level_adds_up(family):
    # A node mask is its tied edge mask and its tied unit mask, so (chain rule) a node's score is
    # the sum of its edges' scores and of its units' scores. (Not Llama at 1e-10: its RMSNorm
    # computes in float32 even in a float64 model, so sums taken in another order round apart.)
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=9))

    def score(logits):
        return logits[:, -1, 0].mean() - logits[:, -1, 1].mean()

    edges, nodes, units = (edge_attribution(model, g, x, score, ablated=a, level=lv) for lv in ("edge", "node", "unit"))
    assert edges.shape == (g.num_edges,) and nodes.shape == (len(g.writers),) and units.shape == (g.num_units,)
    per_writer = torch.zeros_like(nodes)
    torch.testing.assert_close(per_writer.index_add(0, g.writer_of_edge(), edges), nodes, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(per_writer.index_add(0, g.writer_of_unit(), units), nodes, rtol=1e-10, atol=1e-12)
    assert bool((units != 0).sum() > g.num_units // 2)


# -- the null ---------------------------------------------------------------------------------------
def test_random_unit_circuits_keep_the_size_or_each_writers_count():
    g = circuit_graph(build("gpt2"), units=BOTH)
    circuit = torch.zeros(g.num_units)
    circuit[torch.randperm(g.num_units, generator=torch.Generator().manual_seed(0))[:40]] = 1
    uniform = random_circuits(nr.key(5), g, circuit, 8, level="unit")
    assert uniform.shape == (8, g.num_units) and (uniform.sum(1) == 40).all()
    assert len({tuple(r.tolist()) for r in uniform}) == 8
    per_writer = random_circuits(nr.key(5), g, circuit, 8, null="in_degree", level="unit")
    sizes = torch.tensor(g.unit_sizes)
    counts = torch.stack([torch.segment_reduce(r, "sum", lengths=sizes) for r in per_writer])
    assert torch.equal(counts, torch.segment_reduce(circuit, "sum", lengths=sizes).expand(8, -1))
    assert not torch.equal(per_writer, circuit.expand(8, -1))
    nodes = random_circuits(nr.key(5), g, torch.tensor([1.0, 0, 1] + [0] * (len(g.writers) - 3)), 4, level="node")
    assert nodes.shape == (4, len(g.writers)) and (nodes.sum(1) == 2).all()
    with pytest.raises(ValueError, match="a node mask has none"):
        random_circuits(nr.key(5), g, nodes[0], 4, null="in_degree", level="node")
    with pytest.raises(ValueError, match=rf"circuit must have shape \({g.num_units},\) \(one entry per unit\)"):
        random_circuits(nr.key(5), g, circuit[1:], 4, level="unit")
    with pytest.raises(ValueError, match=r"level must be one of \['edge', 'node', 'unit'\], got 'neuron'"):
        random_circuits(nr.key(5), g, circuit, 4, level="neuron")


def test_unit_circuits_evaluated_vmapped_equal_a_loop():
    model = build("gpt_neox")
    g, x = circuit_graph(model, units=BOTH), ids()
    a = ablation_values(model, g, "mean", x, reference=ids(6, 7, seed=2))
    circuit = torch.zeros(g.num_units)
    circuit[::3] = 1
    circuits = random_circuits(nr.key(1), g, circuit, 5, level="unit")

    def score(logits):
        return logits[:, -1].log_softmax(-1)[:, 0].mean()

    vmapped = evaluate_circuits(model, g, circuits, x, score, ablated=a, level="unit")
    with torch.no_grad():
        loop = torch.stack([score(circuit_forward(model, g, x, unit_mask=c, ablated=a).output) for c in circuits])
    assert vmapped.shape == (5,) and torch.allclose(vmapped, loop, rtol=1e-5, atol=1e-6)
    assert len(set(vmapped.tolist())) == 5


# -- training --------------------------------------------------------------------------------------
def _task():
    return dict(input_ids=ids(4, 6, seed=3), corrupted=ids(4, 6, seed=4), answers=torch.tensor([1, 2, 3, 4]),
                wrong=torch.tensor([5, 6, 7, 8]))


def test_unit_level_mask_counts_units():
    g = circuit_graph(build("gpt2"), units=BOTH)
    m = CircuitMask(g, level="unit", strategy="continuous_sparsification")
    assert m.theta.shape == (g.num_units,) and m.size == g.num_units
    assert set(m.forward_masks()) == {"unit_mask"}
    with torch.no_grad():
        m.theta.copy_(torch.linspace(-1, 1, g.num_units))
    assert m.top_k(7).sum() == 7 and m.top_k(7)[-7:].sum() == 7  # the 7 largest theta are the last units
    assert torch.equal(m.hard(), (m.theta > 0).float())
    assert m.l0().item() == pytest.approx(torch.sigmoid(m.theta).sum().item())


def test_unit_masks_reach_a_target_fraction_of_units():
    model = build("gpt2")
    g = circuit_graph(model, units="neuron")
    out = train_circuit(model, g, [_task()], key=nr.key(0), steps=150, metric="logit_diff", ablation="resample",
                        level="unit", target_sparsity=0.8, warmup=120, lr=0.1, lambda_lr=0.1)
    last = out.history[-1]
    assert last["target"] == 0.8 and abs(last["sparsity"] - 0.8) < 0.06
    assert abs(last["kept"] - 0.2 * g.num_units) < 0.06 * g.num_units


def test_learned_unit_ablation_trains_both_parts_from_the_mean():
    model = build("gpt2")
    g = circuit_graph(model, units=BOTH)
    reference = ids(6, 6, seed=9)
    mean = ablation_values(model, g, "mean", reference=reference)
    start = learned_ablation(model, g, init=mean)
    assert isinstance(start, UnitAblation) and torch.equal(start.activations.detach(), mean.activations)
    out = train_circuit(model, g, [_task()], key=nr.key(0), steps=3, metric="cross_entropy", ablation="learned",
                        reference=reference, level="unit", l0_lambda=0.01)
    assert not torch.equal(out.ablation.writers.detach(), mean.writers)
    assert not torch.equal(out.ablation.activations.detach(), mean.activations)


def test_bad_unit_inputs_name_the_argument():
    model = build("gpt2")
    g, x = circuit_graph(model, units=BOTH), ids()
    ones = torch.ones(g.num_units)
    with pytest.raises(ValueError, match=rf"unit_mask must have shape \({g.num_units},\)"):
        circuit_forward(model, g, x, unit_mask=ones[1:])
    with pytest.raises(ValueError, match="give one of mask= .*node_mask= .*unit_mask="):
        circuit_forward(model, g, x, unit_mask=ones, node_mask=torch.ones(len(g.writers)))
    writers = ablation_values(model, g, "resample", x, corrupted=ids(seed=9)).writers
    with pytest.raises(ValueError, match="UnitAblation"):
        circuit_forward(model, g, x, unit_mask=ones, ablated=writers)
    with pytest.raises(ValueError, match=rf"ablated.activations must have shape .*{g.num_activations}"):
        circuit_forward(model, g, x, unit_mask=ones, ablated=UnitAblation(writers, torch.zeros(1, 1, 3)))
    assert set(FINE_UNITS) == set(BOTH)
