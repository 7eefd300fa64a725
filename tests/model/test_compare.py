"""compare_subnetworks: counts per tensor, layer and head, and the hypergeometric chance level."""

import itertools
import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from model_zoo import build

import neurosurgeon as ns
from neurosurgeon.functional.overlap import expected_overlap, hypergeometric_log_pmf, hypergeometric_sf


def brute_force_sf(x, n, k_a, k_b):
    """P(overlap >= x) by enumerating every k_b-subset of n units against a fixed k_a-subset."""
    a = set(range(k_a))
    subsets = list(itertools.combinations(range(n), k_b))
    return sum(len(a.intersection(s)) >= x for s in subsets) / len(subsets)


def test_hypergeometric_sf_equals_enumeration_of_every_subset_for_tiny_n():
    for n in range(0, 8):
        for k_a, k_b in itertools.product(range(n + 1), repeat=2):
            for x in range(-1, n + 2):
                assert hypergeometric_sf(x, n, k_a, k_b) == pytest.approx(brute_force_sf(x, n, k_a, k_b), abs=1e-12)


@given(st.integers(1, 300), st.data())
def test_hypergeometric_sf_matches_exact_rational_sum(n, data):
    k_a = data.draw(st.integers(0, n))
    k_b = data.draw(st.integers(0, n))
    x = data.draw(st.integers(0, min(k_a, k_b) + 1))
    exact = sum(Fraction(math.comb(k_a, i) * math.comb(n - k_a, k_b - i), math.comb(n, k_b))
                for i in range(x, min(k_a, k_b) + 1))
    got = hypergeometric_sf(x, n, k_a, k_b)
    assert got == pytest.approx(float(exact), rel=1e-9, abs=1e-15)


def reference_sf_by_recurrence(x, n, k_a, k_b):
    """An lgamma-free reference: pmf ratios from the mode, normalised over +-60 sd of the support."""
    mode = (k_a + 1) * (k_b + 1) // (n + 2)
    sd = math.sqrt(k_b * (k_a / n) * (1 - k_a / n) * (n - k_b) / (n - 1))
    lo, hi = max(0, k_b - (n - k_a), int(mode - 60 * sd)), min(k_a, k_b, int(mode + 60 * sd))
    terms = {mode: 1.0}
    for i in range(mode, hi):
        terms[i + 1] = terms[i] * (k_a - i) * (k_b - i) / ((i + 1) * (n - k_a - k_b + i + 1))
    for i in range(mode, lo, -1):
        terms[i - 1] = terms[i] * i * (n - k_a - k_b + i) / ((k_a - i + 1) * (k_b - i + 1))
    return sum(v for i, v in terms.items() if i >= x) / sum(terms.values())


@pytest.mark.parametrize("n,k_a,k_b", [(3_000_000, 1_000_000, 1_000_000), (5_000_000, 40_000, 2_000_000)])
def test_hypergeometric_sf_is_accurate_for_millions_of_units(n, k_a, k_b):
    mean = expected_overlap(n, k_a, k_b)
    sd = math.sqrt(k_b * (k_a / n) * (1 - k_a / n) * (n - k_b) / (n - 1))
    for z in (-3, -0.5, 0, 1, 4, 12):
        x = int(mean + z * sd)
        assert hypergeometric_sf(x, n, k_a, k_b) == pytest.approx(reference_sf_by_recurrence(x, n, k_a, k_b), rel=1e-6)


def test_hypergeometric_pmf_sums_to_one_and_is_zero_off_support():
    p = hypergeometric_log_pmf(torch.arange(-1, 12), 20, 7, 11).exp()
    assert p[0] == 0 and p.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad", [dict(x=1, n=3, k_a=4, k_b=1), dict(x=1, n=-1, k_a=0, k_b=0), dict(x=1.5, n=3, k_a=1, k_b=1)])
def test_hypergeometric_sf_rejects_impossible_sizes(bad):
    with pytest.raises(ValueError):
        hypergeometric_sf(**bad)


def random_masks(model, seed, density=0.5):
    """Set every mask layer's theta so that about ``density`` of each tensor is kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ns.mask_layers(model).values():
            p = layer.weight_mask_params
            p.copy_(torch.rand(p.shape, generator=g) - (1 - density))
    return model


def masked_gpt2(seed, strategy="continuous_sparsification", **kw):
    model = build("gpt2")
    ns.inject_masks(model, ["transformer.h.*.attn.*", "transformer.h.*.mlp.*"], strategy=strategy, **kw)
    return random_masks(model, seed) if strategy != "magnitude_pruning" else model


def test_compare_dicts_counts_kept_intersection_union_and_iou_by_hand():
    a = {"h.0.w.weight": torch.tensor([[1, 1, 0], [0, 1, 0]]).bool(), "h.1.w.weight": torch.tensor([1, 0, 0, 0]).bool()}
    b = {"h.0.w.weight": torch.tensor([[1, 0, 1], [0, 1, 1]]).bool(), "h.1.w.weight": torch.tensor([0, 1, 0, 0]).bool()}
    t = ns.compare_subnetworks(a, b)
    o = t.tensors["h.0.w.weight"]
    assert (o.total, o.kept_a, o.kept_b, o.intersection, o.union) == (6, 3, 4, 2, 5)
    assert o.iou == pytest.approx(2 / 5) and o.expected_intersection == pytest.approx(2.0)
    assert o.p_value == pytest.approx(brute_force_sf(2, 6, 3, 4))
    assert t.layers["h.1"].intersection == 0 and t.layers["h.1"].p_value == 1.0
    assert (t.total.total, t.total.kept_a, t.total.kept_b, t.total.intersection) == (10, 4, 5, 2)
    d = json.loads(json.dumps(t.to_dict()))
    assert d["total"]["union"] == 7 and set(d["tensors"]) == set(a)
    assert "IoU" in str(t) and "h.0.w.weight" in str(t)


def test_compare_models_counts_each_attention_head_from_its_weight_slices():
    a, b = masked_gpt2(1), masked_gpt2(2)
    t = ns.compare_subnetworks(a, b)
    sa, sb = ns.subnetwork(a), ns.subnetwork(b)
    d = 32 // 2
    for layer in range(2):
        qkv, proj = f"transformer.h.{layer}.attn.c_attn.weight", f"transformer.h.{layer}.attn.c_proj.weight"
        for head in range(2):
            # GPT-2's Conv1D stores (in, out): c_attn's columns are [q | k | v], each (head, d).
            cols = torch.cat([torch.arange(part * 32 + head * d, part * 32 + (head + 1) * d) for part in range(3)])
            rows = torch.arange(head * d, (head + 1) * d)
            ka = int(sa[qkv][:, cols].sum() + sa[proj][rows].sum())
            both = int((sa[qkv] & sb[qkv])[:, cols].sum() + (sa[proj] & sb[proj])[rows].sum())
            o = t.heads[f"transformer.h.{layer}"][head]
            assert (o.total, o.kept_a, o.intersection) == (32 * 3 * d + d * 32, ka, both)
        layer_total = sum(v.numel() for k, v in sa.items() if k.startswith(f"transformer.h.{layer}."))
        assert t.layers[f"transformer.h.{layer}"].total == layer_total


def test_compare_mask_files_equals_compare_models(tmp_path):
    a, b = masked_gpt2(1), masked_gpt2(2)
    ns.save_masks(a, tmp_path / "a.safetensors")
    ns.save_masks(b, tmp_path / "b.safetensors")
    from_models = ns.compare_subnetworks(a, b).to_dict()
    with_model = ns.compare_subnetworks(tmp_path / "a.safetensors", str(tmp_path / "b.safetensors"), model=build("gpt2"))
    assert with_model.to_dict() == from_models
    # Weight units: the file's unit-shaped masks are the weights' masks, so the totals agree.
    without = ns.compare_subnetworks(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert without.unit == "mask unit" and without.total == with_model.total and without.heads == {}


def test_neuron_mask_file_without_model_counts_units_and_with_model_counts_weights(tmp_path):
    a = masked_gpt2(1, mask_unit="neuron")
    ns.save_masks(a, tmp_path / "a.safetensors")
    units = ns.compare_subnetworks(tmp_path / "a.safetensors", tmp_path / "a.safetensors").total
    weights = ns.compare_subnetworks(tmp_path / "a.safetensors", tmp_path / "a.safetensors", model=build("gpt2")).total
    assert units.total == sum(m.weight_mask_params.numel() for m in ns.mask_layers(a).values())
    assert weights.total == sum(v.numel() for v in ns.subnetwork(a).values())
    assert weights.kept_a == sum(int(v.sum()) for v in ns.subnetwork(a).values())


def test_magnitude_pruning_file_needs_the_model(tmp_path):
    model = masked_gpt2(0, strategy="magnitude_pruning", prune_percentage=0.3)
    ns.save_masks(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="magnitude"):
        ns.compare_subnetworks(tmp_path / "m.safetensors", tmp_path / "m.safetensors")
    t = ns.compare_subnetworks(tmp_path / "m.safetensors", model, model=model)
    assert t.total.kept_a == t.total.intersection == t.total.kept_b
    assert t.total.kept_a == pytest.approx(0.7 * t.total.total, abs=8)


def test_masks_of_different_models_are_a_value_error_naming_the_tensors(tmp_path):
    a = masked_gpt2(1)
    other = build("gpt2")
    ns.inject_masks(other, ["transformer.h.*.attn.*"])
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight"):
        ns.compare_subnetworks(a, other)
    wide = {k: torch.ones(2, 2, dtype=torch.bool) for k in ns.subnetwork(a)}
    with pytest.raises(ValueError, match="shapes differ"):
        ns.compare_subnetworks(a, wide)
    ns.save_masks(a, tmp_path / "a.safetensors")
    bert = build("bert")
    with pytest.raises(ValueError, match="different model"):
        ns.compare_subnetworks(tmp_path / "a.safetensors", tmp_path / "a.safetensors", model=bert)


def test_compare_rejects_inputs_of_the_wrong_kind():
    with pytest.raises(TypeError, match="mask file path"):
        ns.compare_subnetworks(3, {})
    with pytest.raises(ValueError, match="no mask layers"):
        ns.compare_subnetworks(build("gpt2"), {})
