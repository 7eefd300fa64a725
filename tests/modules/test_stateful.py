"""Stateful property tests: random sequences of mode switches, setting changes, parameter
edits, state-dict round trips and bakes on one mask layer.

After every step the layer's output must equal a reference built from the pure functions
(:func:`neurosurgeon.functional.mask_parameters` + :func:`~neurosurgeon.functional.layer_forward`)
with the layer's own tensors and key, and the mask invariants must hold (binary hard masks,
ablation counts, reuse of random draws until ``force_resample``, ``use_masks=False`` is the
base layer, L0 bounds, round trips reproduce every mode's output bitwise).
"""

from __future__ import annotations

import io

import pytest
import torch
from _modules_zoo import ABLATIONS, KINDS, STRATEGIES, conv_args, example_input, make_layer, reference
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional.ablation import RANDOM_ABLATIONS


def is_hard(layer):
    return isinstance(layer, ns.MagPruneLayer) or not layer.training or not layer.weight_mask_params.requires_grad


def hard_mask_hparams(layer, strategy):
    """The hyper-parameters the subnetwork h depends on."""
    if strategy == "magnitude_pruning":
        return {"prune_percentage": layer.prune_percentage}
    if strategy == "hard_concrete":
        return {"left_stretch": layer.left_stretch, "right_stretch": layer.right_stretch}
    return {}


def run(layer, x):
    """(output or the ValueError raised, noise step the forward used)."""
    step = int(layer.noise_step)
    try:
        with torch.no_grad():
            return layer(x), step
    except ValueError as e:
        return e, step


class MaskLayerMachine(RuleBasedStateMachine):
    @initialize(
        strategy=st.sampled_from(STRATEGIES),
        kind=st.sampled_from(KINDS),
        mask_unit=st.sampled_from(["weight", "neuron"]),
        mask_bias=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def build(self, strategy, kind, mask_unit, mask_bias, seed):
        self.strategy, self.kind = strategy, kind
        self.config = dict(mask_bias=mask_bias, mask_unit=None if strategy == "magnitude_pruning" else mask_unit)
        self.layer = make_layer(strategy, kind, **self.config, key=seed, seed=seed)
        self.x = example_input(self.layer, seed=seed)

    # -- rules ---------------------------------------------------------------------------------------
    @rule(mode=st.booleans())
    def train_or_eval(self, mode):
        assert self.layer.train(mode) is self.layer
        assert self.layer.training is mode

    @rule(ablation=st.sampled_from(ABLATIONS))
    def set_ablation(self, ablation):
        self.layer.ablation = ablation
        assert self.layer.ablation == ablation

    @rule()
    def force_resample(self):
        self.layer.force_resample = True

    @rule(value=st.booleans())
    def set_use_masks(self, value):
        self.layer.use_masks = value

    @rule(kind=st.sampled_from(["randn", "positive", "negative", "zero", "sparse"]), seed=st.integers(0, 1000))
    def edit_parameters(self, kind, seed):
        """Edit theta (or, for magnitude pruning, the weights, with ties) in place."""
        g = torch.Generator().manual_seed(seed)
        targets = [self.layer.weight] + ([self.layer.bias] if self.layer.bias is not None else [])
        if self.strategy != "magnitude_pruning":
            targets = [t for t in self.layer.mask_tensors() if t is not None]
        with torch.no_grad():
            for t in targets:
                v = torch.randn(t.shape, generator=g, dtype=t.dtype)
                if kind == "positive":
                    v = v.abs() + 0.1
                elif kind == "negative":
                    v = -v.abs() - 0.1
                elif kind == "zero":
                    v = torch.zeros_like(v)
                elif kind == "sparse":  # mostly out: a small subnetwork (complement sampling works)
                    v = torch.where(torch.rand(t.shape, generator=g) < 0.2, v.abs() + 0.1, -v.abs() - 0.1)
                if self.strategy == "magnitude_pruning":
                    v = torch.round(v * 2) / 2  # ties in |w|
                t.copy_(v.to(t.dtype))

    @precondition(lambda self: self.strategy != "magnitude_pruning")
    @rule(frozen=st.booleans())
    def freeze_mask_parameters(self, frozen):
        for t in self.layer.mask_tensors():
            if t is not None:
                t.requires_grad_(not frozen)

    @precondition(lambda self: self.strategy != "magnitude_pruning")
    @rule(temperature=st.floats(0.05, 50.0))
    def set_temperature(self, temperature):
        self.layer.temperature = temperature

    @precondition(lambda self: self.strategy == "magnitude_pruning")
    @rule(p=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]))
    def set_prune_percentage(self, p):
        self.layer.prune_percentage = p

    @precondition(lambda self: self.strategy != "magnitude_pruning")
    @rule(unit=st.sampled_from(["weight", "neuron"]))
    def set_mask_unit(self, unit):
        self.layer.mask_unit = unit
        self.config["mask_unit"] = unit
        wp = self.layer.weight_mask_params
        assert tuple(wp.shape) == F.unit_shape(tuple(self.layer.weight.shape), unit, kind=self.kind)

    @rule(value=st.booleans())
    def set_mask_bias(self, value):
        self.layer.mask_bias = value
        self.config["mask_bias"] = value
        if self.strategy != "magnitude_pruning":
            assert hasattr(self.layer, "bias_mask_params") == value

    @rule(data=st.data())
    def state_dict_round_trip(self, data):
        """Save, load into a fresh layer built with another key, copy the non-state settings:
        every output (random baselines and hard-concrete noise included) is reproduced."""
        old = self.layer
        sd = {k: v.clone() for k, v in old.state_dict().items()}
        other = data.draw(st.integers(0, 2**31 - 1))
        fresh = make_layer(self.strategy, self.kind, **self.config, key=other, seed=other)
        if data.draw(st.booleans()):
            # Through bytes, as a checkpoint file would go.
            buf = io.BytesIO()
            torch.save(sd, buf)
            buf.seek(0)
            sd = torch.load(buf, weights_only=True)
        fresh.load_state_dict(sd, strict=True)
        fresh.train(old.training)
        fresh.ablation = old.ablation
        fresh.use_masks = old.use_masks
        if self.strategy == "magnitude_pruning":
            fresh.prune_percentage = old.prune_percentage
        else:
            fresh.temperature = old.temperature
            for a, b in zip(old.mask_tensors(), fresh.mask_tensors()):
                if a is not None:
                    b.requires_grad_(a.requires_grad)
        assert torch.equal(fresh.mask_key, old.mask_key) and torch.equal(fresh.noise_step, old.noise_step)
        y_old, _ = run(old, self.x)
        y_new, _ = run(fresh, self.x)
        if isinstance(y_old, Exception):
            assert isinstance(y_new, ValueError)
        else:
            assert torch.equal(y_old, y_new)
        self.layer = fresh

    @rule()
    def bake(self):
        step = int(self.layer.noise_step)
        try:
            baked = self.layer.bake()
        except ValueError:
            _, _ = run(self.layer, self.x)  # the forward refuses the same setting
            return
        assert not isinstance(baked, ns.MaskLayer)
        assert type(baked) in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d) or type(baked).__name__ == "Conv1D"
        expected, _ = reference(self.layer, self.x, noise_step=step)
        with torch.no_grad():
            assert torch.equal(baked(self.x), expected)
        # Baking copies: editing the baked layer leaves ours alone.
        with torch.no_grad():
            baked.weight.add_(1.0)
        assert not any(p is baked.weight for p in self.layer.parameters())

    # -- invariants ----------------------------------------------------------------------------------
    @invariant()
    def output_matches_pure_function_reference_and_spec(self):
        layer = self.layer
        resample = layer.force_resample
        key_before = layer.mask_key.clone()
        y, step = run(layer, self.x)
        assert layer.force_resample is False
        if resample:
            assert not torch.equal(layer.mask_key, key_before)
        try:
            expected, p = reference(layer, self.x, noise_step=step)
        except ValueError:
            assert isinstance(y, ValueError), "the layer accepted a setting the functional core refuses"
            return
        assert not isinstance(y, Exception), f"the layer refused a setting the functional core accepts: {y}"
        assert torch.equal(y, expected)
        if not layer.use_masks:
            base = F.layer_forward(self.kind, self.x, layer.weight, layer.bias, **conv_args(layer))
            assert torch.equal(y, base)
            return
        self._check_masks(layer, p)
        # Random draws are reused on every forward until force_resample.
        if is_hard(layer) and layer.ablation in RANDOM_ABLATIONS:
            y2, _ = run(layer, self.x)
            assert torch.equal(y, y2)

    def _check_masks(self, layer, p):
        strategy = self.strategy
        wm = layer.weight_mask
        assert wm is not None and wm.shape == layer.weight.shape
        assert torch.equal(wm, p.weight_mask)
        if layer.mask_bias:
            assert torch.equal(layer.bias_mask, p.bias_mask)
        if not is_hard(layer):
            assert bool(((wm >= 0) & (wm <= 1)).all())
            return
        assert bool(((wm == 0) | (wm == 1)).all())
        params, _ = layer.mask_tensors()
        h = F.hard_mask(strategy, params, **hard_mask_hparams(layer, strategy))
        unit_mask = wm if h.shape == wm.shape else self._to_units(wm, h.shape)
        k = int(h.sum())
        ablation = layer.ablation
        if ablation == "none":
            assert torch.equal(unit_mask, h.to(unit_mask.dtype))
            assert int(layer.calculate_l0()) == int(wm.sum()) + (int(layer.bias_mask.sum()) if layer.mask_bias else 0)
        elif ablation in ("zero_ablate", "random_ablate"):
            assert torch.equal(unit_mask, (1 - h).to(unit_mask.dtype))
        elif ablation == "randomly_sampled":
            assert int((unit_mask == 0).sum()) == k
        else:  # complement_sampled: k zeros, all outside the subnetwork
            assert int((unit_mask == 0).sum()) == k
            assert not bool(((unit_mask == 0) & (h != 0)).any())
        max_l0 = layer.calculate_max_l0()
        assert max_l0 == layer.weight.numel() + (layer.bias.numel() if layer.mask_bias else 0)

    @staticmethod
    def _to_units(wm, unit_shape):
        """The broadcast mask back at mask-unit shape (one entry per neuron)."""
        index = tuple(slice(None) if s > 1 else slice(0, 1) for s in unit_shape)
        return wm[index]


MaskLayerMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=15, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMaskLayerStateMachine = MaskLayerMachine.TestCase


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reference_helper_agrees_with_a_hand_computed_case(strategy):
    """Guard the guard: for a Linear layer in eval mode with ablation none, the reference is W * h."""
    layer = make_layer(strategy, "linear").eval()
    x = example_input(layer)
    expected, p = reference(layer, x)
    if strategy == "magnitude_pruning":
        h = (layer.weight.abs() > layer.weight.abs().flatten().kthvalue(12).values).float()  # 60% of 20 pruned
    else:
        h = (layer.weight_mask_params > 0).float()
    assert torch.equal(p.weight, layer.weight * h)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
