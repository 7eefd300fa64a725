"""The eager recording forward keeps every writer's difference in one stack whose graph is kept
by anchors (neurosurgeon.circuits.stack): its gradients must equal those of the chunk-by-chunk
path that torch.func transforms take, for every input that can need one, whatever the loss reads
and however often the graph is walked."""

from __future__ import annotations

import pytest
import torch
from circuit_zoo import PRE_NORM, build, ids

from neurosurgeon.circuits import ablation_values, circuit_forward, circuit_graph


def _setup(family):
    model = build(family, dtype=torch.float64)
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=4))
    mask = torch.rand(g.num_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, g, x, a, mask


def _close(got, want):
    assert got.shape == want.shape
    got, want = got.detach(), want.detach()
    assert float((got - want).abs().max()) <= 1e-12 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("family", PRE_NORM)
def test_eager_gradients_equal_the_transform_path(family):
    # The mask's and the ablated values' (a learned ablation trains them).
    model, g, x, a, mask = _setup(family)

    def loss(m, ab):
        return circuit_forward(model, g, x, mask=m, ablated=ab).output.sin().sum()

    leaves = [mask.clone().requires_grad_(), a.clone().requires_grad_()]
    eager = torch.autograd.grad(loss(*leaves), leaves)
    for got, want in zip(eager, torch.func.grad(loss, argnums=(0, 1))(mask, a)):
        _close(got, want)


class _Circuit(torch.nn.Module):
    # The circuit forward as a module, so torch.func.functional_call can swap the model's weights.
    def __init__(self, model, graph, ablated):
        super().__init__()
        self.model, self.graph, self.ablated = model, graph, ablated

    def forward(self, x, mask):
        return circuit_forward(self.model, self.graph, x, mask=mask, ablated=self.ablated).output.sin().sum()


@pytest.mark.parametrize("family", PRE_NORM)
def test_weight_gradients_equal_the_transform_path(family):
    model, g, x, a, mask = _setup(family)
    circuit = _Circuit(model, g, a)
    params = {n: p.detach() for n, p in circuit.named_parameters()}
    model.requires_grad_(True)
    eager = torch.autograd.grad(circuit(x, mask), list(circuit.parameters()))
    transformed = torch.func.grad(lambda p: torch.func.functional_call(circuit, p, (x, mask)))(params)
    for got, name in zip(eager, params):
        _close(got, transformed[name])


def test_a_loss_on_the_writers_and_a_retained_graph():
    # A loss that reads only some writers runs only some reader groups; a graph walked twice
    # (retain_graph) adds the same gradient twice.
    model, g, x, a, mask = _setup("gpt2")

    def loss(m):
        out = circuit_forward(model, g, x, mask=m, ablated=a, return_writers=True)
        return out.writers[g.writers.index("A1.0")].square().sum() + out.output.mean()

    leaf = mask.clone().requires_grad_()
    value = loss(leaf)
    value.backward(retain_graph=True)
    once = leaf.grad.clone()
    _close(once, torch.func.grad(loss)(mask))
    value.backward()
    _close(leaf.grad, 2 * once)
    writer_only = mask.clone().requires_grad_()
    out = circuit_forward(model, g, x, mask=writer_only, ablated=a, return_writers=True)
    (grad,) = torch.autograd.grad(out.writers[g.writers.index("A1.0")].square().sum(), [writer_only])
    _close(grad, torch.func.grad(lambda m: circuit_forward(model, g, x, mask=m, ablated=a, return_writers=True)
                                 .writers[g.writers.index("A1.0")].square().sum())(mask))


def test_second_derivatives_through_torch_func_and_a_clear_error_eagerly():
    model, g, x, a, mask = _setup("gpt2")

    def loss(m):
        return circuit_forward(model, g, x, mask=m, ablated=a).output.sin().sum()

    hessian = torch.func.jacrev(torch.func.grad(loss))(mask)
    assert hessian.shape == (g.num_edges, g.num_edges)
    _close(hessian, hessian.T)  # symmetric, as a Hessian is
    leaf = mask.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(leaf), [leaf], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
