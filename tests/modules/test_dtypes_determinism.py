"""Dtypes, devices and determinism of the mask layers.

- float32, float64, bfloat16 and float16 weights on CPU, every strategy and layer type: the
  layer runs, its output equals the pure-function reference, masks are binary when hard and are
  cast to the weight's dtype, theta is float32 under half-precision weights (else the weight's
  dtype), gradients reach theta.
- CUDA (``@pytest.mark.cuda``, skipped without a device): a layer moved to CUDA runs, gives the
  same masks as on CPU for the same key, and trains.
- Determinism: the same seeds give identical masks and identical short training curves across
  two runs in one process; nothing reads torch's global RNG after construction.
"""

from __future__ import annotations

import pytest
import torch
from _modules_zoo import ABLATIONS, LEARNED, cases, example_input, layer_class, reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ALL = cases()


# -- dtypes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strategy,kind", ALL)
def test_every_ablation_and_unit_runs_in_every_dtype_and_equals_the_reference(make_layer, strategy, kind, dtype):
    for unit in (None,) if strategy == "magnitude_pruning" else ("weight", "neuron"):
        layer = make_layer(strategy, kind, dtype=dtype, mask_bias=True, mask_unit=unit).eval()
        assert layer.weight.dtype == dtype
        _check_every_ablation(layer, strategy, dtype)


def _check_every_ablation(layer, strategy, dtype):
    x = example_input(layer)
    for ablation in ABLATIONS:
        layer.ablation = ablation
        with torch.no_grad():
            y = layer(x)
        expected, _ = reference(layer, x)
        assert y.dtype == dtype
        assert torch.equal(y, expected), ablation
        wm = layer.weight_mask
        assert wm.dtype == dtype and wm.shape == layer.weight.shape
        assert bool(((wm == 0) | (wm == 1)).all())
        if ablation == "none" and strategy == "magnitude_pruning":
            n = layer.weight.numel()
            assert int((wm == 0).sum()) == round(layer.prune_percentage * n)  # exact count, even in bf16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strategy,kind", cases(LEARNED))
def test_training_mode_runs_in_every_dtype_and_gradients_reach_theta(make_layer, strategy, kind, dtype):
    layer = make_layer(strategy, kind, dtype=dtype, mask_bias=True).train()
    x = example_input(layer)
    step = int(layer.noise_step)
    y = layer(x)
    assert y.dtype == dtype and layer.weight_mask.dtype == dtype
    expected, _ = reference(layer, x, noise_step=step)
    assert torch.equal(y.detach(), expected)
    (y.float().square().sum() + layer.calculate_l0().float()).backward()
    for p in (layer.weight_mask_params, layer.bias_mask_params):
        # sigma(beta * theta) needs float32's range: half-precision weights get float32 theta
        assert p.dtype == torch.promote_types(dtype, torch.float32)
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())


@pytest.mark.parametrize("strategy,kind", ALL)
def test_masks_do_not_depend_on_the_weight_dtype(make_layer, strategy, kind):
    """Same theta values and key: the same subnetwork and the same random baselines in every dtype."""
    masks = {}
    for dtype in DTYPES:
        layer = make_layer(strategy, kind, dtype=dtype, mask_bias=True)
        if strategy == "magnitude_pruning":
            with torch.no_grad():  # values exactly representable in every dtype
                layer.weight.copy_(torch.randperm(layer.weight.numel(), generator=torch.Generator().manual_seed(1))
                                   .reshape(layer.weight.shape).to(dtype) - 8)
        layer.eval()
        x = example_input(layer)
        for ablation in ("none", "zero_ablate", "randomly_sampled", "complement_sampled"):
            layer.ablation = ablation
            with torch.no_grad():
                layer(x)
            masks.setdefault(ablation, []).append(layer.weight_mask.float())
    for ablation, ms in masks.items():
        assert all(torch.equal(ms[0], m) for m in ms[1:]), ablation


# -- devices --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,kind", ALL)
def test_no_tensor_is_created_on_a_fixed_device(make_layer, strategy, kind):
    """On the meta device nothing is computed, but every tensor a layer makes must follow it."""
    layer = make_layer(strategy, kind, mask_bias=True, device="meta")
    assert all(t.device.type == "meta" for t in (*layer.parameters(), *layer.buffers()))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("strategy,kind", ALL)
def test_layer_moved_to_cuda_gives_the_same_masks_as_on_cpu_and_trains(make_layer, strategy, kind, dtype):
    cpu = make_layer(strategy, kind, dtype=dtype, mask_bias=True).eval()
    gpu = make_layer(strategy, kind, dtype=dtype, mask_bias=True).to("cuda").eval()
    assert gpu.mask_key.device.type == "cuda"
    x = example_input(cpu)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for ablation in ABLATIONS:
        cpu.ablation = gpu.ablation = ablation
        with torch.no_grad():
            y_cpu, y_gpu = cpu(x), gpu(x.cuda())
        assert y_gpu.device.type == "cuda"
        assert torch.equal(cpu.weight_mask, gpu.weight_mask.cpu()), ablation
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, **tol)
    if strategy != "magnitude_pruning":
        cpu.ablation = gpu.ablation = "none"
        gpu.train()(x.cuda()).float().square().sum().backward()
        assert gpu.weight_mask_params.grad.is_cuda
        if strategy == "hard_concrete":  # training noise is drawn from the key, not a device RNG
            cpu.train()(x)
            torch.testing.assert_close(gpu.weight_mask.detach().cpu(), cpu.weight_mask.detach(), rtol=1e-3, atol=1e-3)


# -- determinism ---------------------------------------------------------------------------------------------


def _training_curve(strategy: str, seed: int, steps: int = 8):
    """Losses, L0s and final hard masks of a short mask-training run of a 2-layer MLP."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cls = layer_class(strategy, "linear")
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


@pytest.mark.parametrize("strategy", LEARNED)
def test_same_seeds_give_identical_training_curves_and_masks(strategy):
    a = _training_curve(strategy, seed=3)
    torch.rand(100)  # disturb torch's global RNG between the runs: it must not matter
    b = _training_curve(strategy, seed=3)
    assert a[0] == b[0] and a[1] == b[1]
    for (ab_a, ms_a, out_a), (ab_b, ms_b, out_b) in zip(a[2], b[2]):
        assert ab_a == ab_b and all(torch.equal(m, n) for m, n in zip(ms_a, ms_b)) and torch.equal(out_a, out_b)
    c = _training_curve(strategy, seed=4)
    assert c[0] != a[0]


@pytest.mark.parametrize("strategy,kind", ALL)
def test_same_key_gives_identical_random_masks_and_the_global_rng_is_untouched(make_layer, strategy, kind):
    outs = []
    for _ in range(2):
        layer = make_layer(strategy, kind, mask_bias=True, key=7)
        x = example_input(layer)
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


@pytest.mark.parametrize("strategy,kind", cases(kinds=["linear"]))
def test_different_keys_give_different_random_baselines(make_layer, strategy, kind):
    masks = []
    for key in (1, 2):
        layer = make_layer(strategy, kind, mask_bias=True, key=key, ablation="randomly_sampled").eval()
        with torch.no_grad():
            layer(example_input(layer))
        masks.append(layer.weight_mask.clone())
    assert not torch.equal(*masks)
