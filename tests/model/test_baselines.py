"""The functional path: masked_weights is the modules' computation as a pure function of
(parameters, key), and evaluate_baselines' vmapped pass equals K separate evaluations."""

import pytest
import torch
import torch.nn as nn
from model_zoo import ZOO, build
from torch.func import functional_call, grad, vmap

import neurosurgeon as ns
from neurosurgeon.functional import random as nr

RANDOM = ["randomly_sampled", "complement_sampled", "random_ablate"]


def sparse_masks(layers, seed=0):
    """Random subnetworks of about a third of each layer (so complement sampling is possible)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layers.values():
            for name in ("weight_mask_params", "bias_mask_params"):
                p = getattr(m, name, None)
                if p is not None:
                    u = torch.rand(p.shape, generator=g)
                    p.copy_(torch.where(u < 0.33, u + 0.1, -u))


def gpt2_masked(**kwargs):
    model = build("gpt2")
    layers = ns.inject_masks(model, ["transformer.h.*.mlp.*", "transformer.h.*.attn.c_attn", "lm_head"],
                             key=11, **kwargs)
    sparse_masks(layers)
    return model.eval(), layers


def mlp_masked(**kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    layers = ns.inject_masks(model, nn.Linear, key=11, **kwargs)
    sparse_masks(layers)
    return model.eval(), layers


def set_layer_keys(model, k):
    for i, layer in enumerate(ns.mask_layers(model).values()):
        layer.mask_key.copy_(nr.fold_in(k, i))


@pytest.mark.parametrize("ablation", ["none", "zero_ablate", *RANDOM])
@pytest.mark.parametrize("kwargs", [{}, {"mask_unit": "neuron", "mask_bias": True}, {"strategy": "hard_concrete"}])
def test_masked_weights_with_the_injection_key_equals_the_modules(ablation, kwargs):
    model, layers = gpt2_masked(**kwargs)
    ns.set_ablation(model, ablation)
    state = ns.masked_weights(model, nr.key(11), ablation=ablation)
    for name, layer in layers.items():
        p = layer.masked_parameters()
        assert torch.equal(state[f"{name}.weight"], p.weight)
        assert (p.bias is None) == (f"{name}.bias" not in state)
        if p.bias is not None:
            assert torch.equal(state[f"{name}.bias"], p.bias)


def test_masked_weights_of_magnitude_pruning_equals_the_modules():
    model, layers = mlp_masked(strategy="magnitude_pruning", prune_percentage=0.4, mask_bias=True)
    state = ns.masked_weights(model, None)
    for name, layer in layers.items():
        assert torch.equal(state[f"{name}.weight"], layer.masked_parameters().weight)


def test_run_masked_equals_the_module_forward():
    model, _ = gpt2_masked()
    ns.set_ablation(model, "complement_sampled")
    batch = ZOO["gpt2"].batch()
    k = nr.key(4)
    out = ns.run_masked(model, ns.masked_weights(model, k, ablation="complement_sampled"), input_ids=batch["input_ids"])
    set_layer_keys(model, k)
    assert torch.equal(out.logits, model(input_ids=batch["input_ids"]).logits)
    assert all(m.use_masks for m in ns.mask_layers(model).values())


@pytest.mark.parametrize("ablation", RANDOM)
def test_vmapped_masks_equal_a_loop_over_the_same_keys(ablation):
    model, _ = gpt2_masked(mask_unit="neuron")
    keys = nr.split(nr.key(2), 5)
    batched = vmap(lambda k: ns.masked_weights(model, k, ablation=ablation))(keys)
    for i in range(len(keys)):
        single = ns.masked_weights(model, keys[i], ablation=ablation)
        assert all(torch.equal(batched[n][i], single[n]) for n in single)
    assert not torch.equal(batched["lm_head.weight"][0], batched["lm_head.weight"][1])


@pytest.mark.parametrize("ablation", RANDOM)
def test_evaluate_baselines_equals_k_separate_module_evaluations(ablation):
    model, _ = gpt2_masked()
    batch = ZOO["gpt2"].batch()
    keys = nr.split(nr.key(8), 4)

    def metric(forward):
        out = forward(input_ids=batch["input_ids"], labels=batch["labels"])
        return {"loss": out.loss, "logits": out.logits}

    with torch.no_grad():
        result = ns.evaluate_baselines(model, metric, keys, ablation=ablation)
        assert result["loss"].shape == (4,) and result["logits"].shape == (4, 4, 12, 50)
        ns.set_ablation(model, ablation)
        for i, k in enumerate(keys):
            set_layer_keys(model, k)
            out = model(**batch)
            torch.testing.assert_close(result["logits"][i], out.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(result["loss"][i], out.loss, rtol=1e-5, atol=1e-5)
    assert len({round(float(v), 6) for v in result["loss"]}) == 4


def test_evaluate_baselines_chunked_equals_unchunked_and_restores_modes():
    model, _ = mlp_masked(mask_bias=True)
    model.train()
    x = torch.randn(7, 6)
    keys = nr.split(nr.key(0), 6)
    fn = lambda f: f(x).softmax(-1)  # noqa: E731
    whole = ns.evaluate_baselines(model, fn, keys, ablation="randomly_sampled")
    chunked = ns.evaluate_baselines(model, fn, keys, ablation="randomly_sampled", chunk_size=4)
    assert torch.equal(whole, chunked)
    assert model.training and all(m.training for m in ns.mask_layers(model).values())
    for i, k in enumerate(keys):
        single = ns.run_masked(model.eval(), ns.masked_weights(model, k, ablation="randomly_sampled"), x).softmax(-1)
        torch.testing.assert_close(whole[i], single, rtol=1e-6, atol=1e-6)


def test_evaluate_baselines_rejects_malformed_keys():
    model, _ = mlp_masked()
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        ns.evaluate_baselines(model, lambda f: f(torch.zeros(1, 6)), nr.key(0), ablation="randomly_sampled")
    with pytest.raises(ValueError, match="needs a key"):
        ns.masked_weights(model, None, ablation="randomly_sampled")


def test_soft_masked_weights_is_differentiable_and_matches_autograd_through_the_modules():
    model, layers = mlp_masked()
    model.train()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    names = [f"{n}.weight_mask_params" for n in layers]
    thetas = {n: model.get_parameter(n).detach().clone() for n in names}

    def loss(thetas):
        state = ns.masked_weights(model, None, hard=False, params=thetas)
        with ns.masks_disabled(model):
            out = functional_call(model, state, (x,), tie_weights=False)
        return nn.functional.cross_entropy(out, y)

    g = grad(loss)(thetas)
    nn.functional.cross_entropy(model(x), y).backward()
    for n in names:
        torch.testing.assert_close(g[n], model.get_parameter(n).grad)


def test_evaluate_baselines_with_inputs_passes_the_outputs_to_fn():
    model, _ = gpt2_masked()
    batch = ZOO["gpt2"].batch()
    keys = nr.split(nr.key(8), 3)
    with torch.no_grad():
        by_outputs = ns.evaluate_baselines(model, lambda out: out.loss, keys, ablation="random_ablate", inputs=batch)
        by_forward = ns.evaluate_baselines(model, lambda f: f(**batch).loss, keys, ablation="random_ablate")
    assert torch.equal(by_outputs, by_forward)
    mlp, _ = mlp_masked()
    x = torch.randn(3, 6)
    assert ns.evaluate_baselines(mlp, lambda out: out.sum(), keys, ablation="zero_ablate", inputs=x).shape == (3,)


@pytest.mark.parametrize("ablation", ["zero_ablate", *RANDOM])
@pytest.mark.parametrize("kwargs", [{}, {"mask_unit": "neuron", "mask_bias": True}, {"strategy": "hard_concrete"},
                                    {"strategy": "magnitude_pruning", "prune_percentage": 0.6}])
def test_evaluate_baselines_equals_vmapped_run_masked_of_masked_weights_bitwise(ablation, kwargs):
    # evaluate_baselines lets each layer draw inside its own forward (one layer's effective
    # weights alive at a time); the result must be exactly the explicit-state path's.
    model, _ = gpt2_masked(**kwargs)
    ids = ZOO["gpt2"].batch()["input_ids"]
    keys = nr.split(nr.key(5), 3)
    with torch.no_grad():
        lazy = ns.evaluate_baselines(model, lambda f: f(input_ids=ids).logits, keys, ablation=ablation, chunk_size=2)
        explicit = vmap(lambda k: ns.run_masked(model, ns.masked_weights(model, k, ablation=ablation), input_ids=ids).logits,
                        chunk_size=2)(keys)
    assert torch.equal(lazy, explicit)
    if ablation in ("randomly_sampled", "complement_sampled"):
        assert not torch.equal(lazy[0], lazy[1])


def test_evaluate_baselines_restores_layer_settings_and_keys_even_when_fn_raises():
    model, layers = mlp_masked()
    first, second = layers.values()
    first.use_masks, first.ablation, second.force_resample = False, "zero_ablate", True
    keys_before = [m.mask_key.clone() for m in layers.values()]
    x = torch.randn(4, 6)
    out = ns.evaluate_baselines(model, lambda f: f(x), nr.split(nr.key(0), 2), ablation="randomly_sampled")
    # masked_weights reads no layer setting, and run_masked leaves a pending resample pending
    expected = vmap(lambda k: ns.run_masked(model, ns.masked_weights(model, k, ablation="randomly_sampled"), x))(
        nr.split(nr.key(0), 2))
    assert torch.equal(out, expected)  # every layer masked and ablated as asked; no resample consumed

    def failing(f):
        f(x)
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        ns.evaluate_baselines(model, failing, nr.split(nr.key(0), 2), ablation="complement_sampled")
    assert (first.use_masks, first.ablation, second.force_resample) == (False, "zero_ablate", True)
    assert (second.use_masks, second.ablation, first.force_resample) == (True, "none", False)
    assert all(torch.equal(m.mask_key, k) for m, k in zip(layers.values(), keys_before))


def test_evaluate_baselines_rejects_non_finite_mask_parameters_by_name():
    model, layers = mlp_masked()
    name, layer = next(iter(layers.items()))
    with torch.no_grad():
        layer.weight_mask_params[0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"{name}\.weight_mask_params"):
        ns.evaluate_baselines(model, lambda f: f(torch.zeros(1, 6)), nr.split(nr.key(0), 2), ablation="randomly_sampled")


def test_the_default_chunk_size_fits_the_largest_layer_and_the_batch_in_the_budget(monkeypatch):
    from neurosurgeon.model import baselines

    model, _ = mlp_masked()  # largest weight 16 x 6 float32: mask + effective weight = 768 bytes a key
    monkeypatch.setattr(baselines, "CHUNK_BYTES", 4000)
    assert baselines.auto_chunk_size(model, 10) == 5
    assert baselines.auto_chunk_size(model, 3) == 3  # never more than the keys
    # + the largest layer's output: tokens x 16 x 4 bytes (rows of a float input, entries of ids)
    assert baselines.auto_chunk_size(model, 10, torch.randn(4, 6)) == 3
    assert baselines.auto_chunk_size(model, 10, {"input_ids": torch.zeros(2, 5, dtype=torch.long)}) == 2
    monkeypatch.setattr(baselines, "CHUNK_BYTES", 10)
    assert baselines.auto_chunk_size(model, 10) == 1

    seen = []
    monkeypatch.setattr(baselines, "auto_chunk_size", lambda *a: seen.append(a) or 1)
    x, keys = torch.randn(4, 6), nr.split(nr.key(0), 3)
    out = ns.evaluate_baselines(model, lambda o: o.sum(-1), keys, ablation="randomly_sampled", inputs=x)
    assert len(seen) == 1 and seen[0][1] == 3 and seen[0][2] is x
    full = ns.evaluate_baselines(model, lambda o: o.sum(-1), keys, ablation="randomly_sampled", inputs=x, chunk_size=3)
    torch.testing.assert_close(out, full)
