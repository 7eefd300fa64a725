"""Dtypes, devices and determinism of the mask layers.

- float32, float64, bfloat16 and float16 weights on CPU, every strategy and layer type: the
  layer runs, its output equals the pure-function reference, masks are binary when hard and are
  cast to the weight's dtype, gradients reach theta.
- CUDA (``@pytest.mark.cuda``, skipped without a device): a layer moved to CUDA runs and gives
  the same masks as on CPU for the same key.
- Determinism: the same seeds give identical masks and identical short training curves across
  two runs in one process; nothing reads torch's global RNG after construction.
"""

from __future__ import annotations

import pytest
import torch

from _modules_zoo import CONSTRUCTOR_CASES, STRATEGY_OF_PREFIX, reference_key, split_name

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import ABLATIONS

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYERS = CONSTRUCTOR_CASES
CLASSES = [p + s for p in STRATEGY_OF_PREFIX for s in LAYERS]


def build(name, dtype=torch.float32, device="cpu", *, key=0, seed=0, **kw):
    """A layer with mixed-sign weights and a sparse subnetwork (so every ablation is legal)."""
    strategy, suffix = split_name(name)
    args, in_shape, kind = LAYERS[suffix]
    if strategy == "magnitude_pruning":
        kw.setdefault("prune_percentage", 0.7)  # keep 30%: complement sampling is possible
    torch.manual_seed(seed)
    layer = getattr(ns, name)(*args, mask_bias=True, key=key, dtype=dtype, device=device, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
        if strategy != "magnitude_pruning":
            for p in (layer.weight_mask_params, layer.bias_mask_params):
                v = torch.randn(p.shape, generator=g)
                p.copy_(torch.where(torch.rand(p.shape, generator=g) < 0.3, v.abs() + 0.1, -v.abs() - 0.1))
    x = torch.randn(in_shape, generator=g).to(device=device, dtype=dtype)
    return layer, x, strategy, kind


def conv_args(layer, kind):
    if kind not in ("conv1d", "conv2d"):
        return {}
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                padding_mode=layer.padding_mode)


def reference(layer, x, strategy, kind, *, hard, noise_step=None):
    if strategy == "magnitude_pruning":
        wp, bp, hp = layer.weight, layer.bias, {"prune_percentage": layer.prune_percentage}
    else:
        wp, bp = layer.weight_mask_params, layer.bias_mask_params
        hp = {"temperature": layer.temperature}
        if strategy == "hard_concrete":
            hp.update(left=layer.left_stretch, right=layer.right_stretch)
    key = reference_key(layer, strategy, hard, noise_step)
    p = F.mask_parameters(layer.weight, layer.bias, wp, bp, key, strategy=strategy, kind=kind, hard=hard, mask_unit=layer.mask_unit,
                          ablation=layer.ablation, **hp)
    return F.layer_forward(kind, x, p.weight, p.bias, **conv_args(layer, kind)), p


# -- dtypes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CLASSES)
def test_every_ablation_runs_in_every_dtype_and_equals_the_reference(name, dtype):
    layer, x, strategy, kind = build(name, dtype)
    assert layer.weight.dtype == dtype
    layer.eval()
    for ablation in ABLATIONS:
        layer.ablation = ablation
        with torch.no_grad():
            y = layer(x)
            expected, p = reference(layer, x, strategy, kind, hard=True)
        assert y.dtype == dtype
        assert torch.equal(y, expected), ablation
        wm = layer.weight_mask
        assert wm.dtype == dtype and wm.shape == layer.weight.shape
        assert bool(((wm == 0) | (wm == 1)).all())
        if ablation == "none" and strategy == "magnitude_pruning":
            n = layer.weight.numel()
            assert int((wm == 0).sum()) == round(layer.prune_percentage * n)  # exact count, even in bf16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [c for c in CLASSES if not c.startswith("MagPrune")])
def test_training_mode_runs_in_every_dtype_and_gradients_reach_theta(name, dtype):
    layer, x, strategy, kind = build(name, dtype)
    layer.train()
    step = int(layer.noise_step)
    y = layer(x)
    assert y.dtype == dtype
    with torch.no_grad():
        expected, _ = reference(layer, x, strategy, kind, hard=False, noise_step=step)
    assert torch.equal(y.detach(), expected)
    (y.float().square().sum() + layer.calculate_l0().float()).backward()
    for p in (layer.weight_mask_params, layer.bias_mask_params):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert p.dtype.is_floating_point and torch.finfo(p.dtype).bits >= torch.finfo(dtype).bits


@pytest.mark.parametrize("name", CLASSES)
def test_masks_do_not_depend_on_the_weight_dtype(name):
    """Same theta values and key: the same subnetwork and the same random baselines in every dtype."""
    masks = {}
    for dtype in DTYPES:
        layer, x, strategy, kind = build(name, dtype)
        if strategy == "magnitude_pruning":
            with torch.no_grad():  # values exactly representable in every dtype, no ties
                layer.weight.copy_(torch.randperm(layer.weight.numel(), generator=torch.Generator().manual_seed(1))
                                   .reshape(layer.weight.shape).to(dtype) - 8)
        layer.eval()
        for ablation in ("none", "zero_ablate", "randomly_sampled", "complement_sampled"):
            layer.ablation = ablation
            with torch.no_grad():
                layer(x)
            masks.setdefault(ablation, []).append(layer.weight_mask.float())
    for ablation, ms in masks.items():
        assert all(torch.equal(ms[0], m) for m in ms[1:]), ablation


# -- devices --------------------------------------------------------------------------------------------------


def test_no_tensor_is_created_on_a_fixed_device():
    """On the meta device nothing is computed, but every tensor a layer makes must follow it."""
    for name in CLASSES:
        layer = getattr(ns, name)(*LAYERS[split_name(name)[1]][0], mask_bias=True, key=0, device="meta")
        assert all(t.device.type == "meta" for t in (*layer.parameters(), *layer.buffers())), name


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", CLASSES)
def test_layer_moved_to_cuda_gives_the_same_masks_as_on_cpu(name, dtype):
    cpu, x, strategy, kind = build(name, dtype)
    gpu, _, _, _ = build(name, dtype)
    gpu = gpu.to("cuda")
    assert gpu.mask_key.device.type == "cuda"
    for layer in (cpu, gpu):
        layer.eval()
    for ablation in ABLATIONS:
        cpu.ablation = gpu.ablation = ablation
        with torch.no_grad():
            y_cpu, y_gpu = cpu(x), gpu(x.cuda())
        assert y_gpu.device.type == "cuda"
        assert torch.equal(cpu.weight_mask, gpu.weight_mask.cpu()), ablation
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=2e-2, atol=2e-2)
    if strategy == "hard_concrete":  # training noise is drawn from the key, not a device RNG
        cpu.ablation = gpu.ablation = "none"
        cpu.train()
        gpu.train()
        with torch.no_grad():
            cpu(x)
            gpu(x.cuda())
        torch.testing.assert_close(gpu.weight_mask.cpu(), cpu.weight_mask, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_functional_draws_on_cuda_equal_cpu_draws():
    from neurosurgeon.functional import random as nr

    k = nr.key(123)
    assert torch.equal(nr.bits(k, (1000,)), nr.bits(k.cuda(), (1000,)).cpu())
    h = (torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    assert torch.equal(F.complement_sampled_mask(k, h), F.complement_sampled_mask(k.cuda(), h.cuda()).cpu())
    assert torch.equal(F.randomly_sampled_mask(k, h), F.randomly_sampled_mask(k.cuda(), h.cuda()).cpu())


# -- determinism ---------------------------------------------------------------------------------------------


def _training_curve(strategy_prefix: str, seed: int, steps: int = 8):
    """Losses, L0s and final hard masks of a short mask-training run of a 2-layer MLP."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cls = getattr(ns, strategy_prefix + "Linear")
    layers = [cls.from_layer(mlp[0], key=seed), cls.from_layer(mlp[2], key=seed + 1)]
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    for p in (*mlp[0].parameters(), *mlp[2].parameters()):
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.1)
    losses, l0s = [], []
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        l0 = sum(layer.calculate_l0() for layer in layers)
        loss = torch.nn.functional.mse_loss(model(x), target) + 1e-3 * l0
        loss.backward()
        opt.step()
        losses.append(loss.item())
        l0s.append(float(l0.detach()))
    model.eval()
    masks = []
    for ablation in ("none", "randomly_sampled", "random_ablate"):
        for layer in layers:
            layer.ablation = ablation
        with torch.no_grad():
            out = model(x)
        masks.append((ablation, [layer.weight_mask.clone() for layer in layers], out))
    return losses, l0s, masks


@pytest.mark.parametrize("prefix", ["ContSparse", "HardConcrete"])
def test_same_seeds_give_identical_training_curves_and_masks(prefix):
    a = _training_curve(prefix, seed=3)
    torch.rand(100)  # disturb torch's global RNG between the runs: it must not matter
    b = _training_curve(prefix, seed=3)
    assert a[0] == b[0] and a[1] == b[1]
    for (ab_a, ms_a, out_a), (ab_b, ms_b, out_b) in zip(a[2], b[2]):
        assert ab_a == ab_b and all(torch.equal(m, n) for m, n in zip(ms_a, ms_b)) and torch.equal(out_a, out_b)
    c = _training_curve(prefix, seed=4)
    assert c[0] != a[0]


@pytest.mark.parametrize("name", CLASSES)
def test_same_key_gives_identical_random_masks_and_the_global_rng_is_untouched(name):
    outs = []
    for _ in range(2):
        layer, x, strategy, kind = build(name, key=7)
        state = torch.get_rng_state()
        run = []
        for training in ((True, False) if strategy != "magnitude_pruning" else (False,)):
            layer.train(training)
            for ablation in (("none",) if training else ABLATIONS):
                layer.ablation = ablation
                with torch.no_grad():
                    run.append(layer(x).clone())
                    run.append(layer.weight_mask.clone())
        assert torch.equal(torch.get_rng_state(), state), "a forward consumed torch's global RNG"
        outs.append(run)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize("name", [c for c in CLASSES if c.endswith("Linear")])
def test_different_keys_give_different_random_baselines(name):
    masks = []
    for key in (1, 2):
        layer, x, _, _ = build(name, key=key)
        layer.eval()
        layer.ablation = "randomly_sampled"
        with torch.no_grad():
            layer(x)
        masks.append(layer.weight_mask.clone())
    assert not torch.equal(*masks)
