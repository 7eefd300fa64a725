"""A large hard-concrete layer trained eagerly switches to a compiled copy of the same gate once
it is built in the background: same noise, same gates and gradients up to float rounding."""

import torch

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import layer as FL
from neurosurgeon.modules import _compiled


def test_large_layer_gate_equals_the_functional_core_before_and_after_compilation():
    torch.manual_seed(0)
    layer = ns.HardConcreteLinear(512, _compiled.MIN_NUMEL // 512, key=1).train()
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 512)

    def reference(step):
        theta = layer.weight_mask_params.detach().clone().requires_grad_(True)
        p = F.mask_parameters(layer.weight, layer.bias, theta, None, FL.noise_key(layer.mask_key, step),
                              strategy="hard_concrete", kind="linear", hard=False)
        torch.nn.functional.linear(x, p.weight, p.bias).square().sum().backward()
        return p.weight_mask, theta.grad

    for _ in range(3):  # the second step starts the compilation; the steps before it is ready are eager
        step = int(layer.noise_step)
        layer.weight_mask_params.grad = None
        layer(x).square().sum().backward()
        want_mask, want_grad = reference(step)
        torch.testing.assert_close(layer.weight_mask, want_mask, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight_mask_params.grad, want_grad, rtol=1e-4, atol=1e-5)
        assert _compiled.wait_for_compiled_gates(timeout=600)
    assert _compiled.compiled_gate(layer.weight, layer.weight_mask_params, layer.mask_hparams) is not None
