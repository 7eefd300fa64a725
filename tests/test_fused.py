"""The fused hard-concrete training kernel (functional/fused.py): the same gates and gradients
as the eager functions, used only where eligible, with a fallback that cannot change results."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import fused
from neurosurgeon.functional import random as nr

HP = dict(temperature=0.5, left=-0.2, right=1.3)  # not the defaults: each must reach the kernel


def _theta_and_weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).requires_grad_(), torch.randn(shape, generator=g)


@pytest.mark.parametrize("temperature", [0.5, 0.6], ids=["power-form", "log-form"])
def test_fused_kernel_equals_eager_gate_weight_and_gradient(temperature):
    # 0.5 = 2 / 4 takes the power-form forward (_power_gate_forward), 0.6 the general one.
    HP = dict(temperature=temperature, left=-0.2, right=1.3)
    theta, w = _theta_and_weight((300, 257))  # odd sizes: a remainder after the vector loop
    with torch.no_grad():  # saturated gates: the power form's overflow must land on the clamps
        theta[0, :6] = torch.tensor([-1e4, -200.0, -60.0, 60.0, 200.0, 1e4])
    key = nr.key(42)
    g_out = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    with fused.fused_kernels("always"):
        w_fused, z_fused, _ = fused.fused_hard_concrete_weight(w, theta, key, **HP)
    (gf,) = torch.autograd.grad((w_fused * g_out).sum(), theta, retain_graph=True)
    z_ref = F.hard_concrete_mask(theta, key, **HP)
    (gr,) = torch.autograd.grad((F.apply_mask(w, z_ref) * g_out).sum(), theta, retain_graph=True)
    # Same key -> same Threefry words (a wrong int32 wrap-around would move gates by ~1, not 1e-6);
    # only the last bit of log/sigmoid may differ between the compiled and eager kernels.
    torch.testing.assert_close(z_fused.detach(), z_ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w_fused.detach(), (w * z_ref).detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gf, gr, rtol=1e-5, atol=1e-6)
    # z (the reported weight_mask) is differentiable too: a loss on it and on W * z together.
    (gf2,) = torch.autograd.grad((w_fused * g_out).sum() + z_fused[:7].sum(), theta)
    (gr2,) = torch.autograd.grad((F.apply_mask(w, z_ref) * g_out).sum() + z_ref[:7].sum(), theta)
    torch.testing.assert_close(gf2, gr2, rtol=1e-5, atol=1e-6)
    assert 0.2 < float((z_ref == 0).float().mean() + (z_ref == 1).float().mean()) < 0.9  # both clamps and the interior
    # A temperature change reaches the kernel (a tensor in the log form, k in the power form).
    hot = {**HP, "temperature": 0.7 if temperature == 0.6 else 2.0 / 3.0}
    with fused.fused_kernels("always"):
        _, z_hot, l0_hot = fused.fused_hard_concrete_weight(w, theta, key, **hot)
    torch.testing.assert_close(z_hot, F.hard_concrete_mask(theta, key, **hot).detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(l0_hot, F.hard_concrete_l0(theta, **hot).detach(), rtol=1e-6, atol=0.0)


def test_power_form_gate_equals_the_log_form_for_every_power():
    # Eager calls of both kernel functions (compiling 8 variants would cost minutes): the algebra
    # (sqrt(r) h)^k = exp(-(logit u + theta) / beta) and 1 / (1 + e^shift h^2) = sigma(theta - shift).
    theta, w = _theta_and_weight((4099,), seed=5)
    with torch.no_grad():
        theta.mul_(4.0)[:8] = torch.tensor([-1e4, -200.0, -60.0, -30.0, 30.0, 60.0, 200.0, 1e4])
    key, left, right = nr.key(3), -0.1, 1.1
    for k in range(1, fused.MAX_GATE_POWER + 1):
        beta = 2.0 / k
        args = (w, theta.detach(), key, torch.tensor(beta), torch.tensor(right - left), torch.tensor(left),
                torch.tensor(F.hard_concrete.l0_shift(beta, left, right)))
        w_log, z_log, l0_log = fused._gate_forward(*args)
        w_pow, z_pow, l0_pow = fused._KERNELS[f"forward_k{k}"](*args)
        assert torch.isfinite(z_pow).all() and ((z_pow >= 0) & (z_pow <= 1)).all(), k
        torch.testing.assert_close(z_pow, z_log, rtol=0.0, atol=1e-6, msg=f"k={k}")
        torch.testing.assert_close(w_pow, w_log, rtol=1e-6, atol=1e-6, msg=f"k={k}")
        torch.testing.assert_close(l0_pow, l0_log, rtol=1e-6, atol=0.0, msg=f"k={k}")
        assert 0.05 < float(((z_log > 0) & (z_log < 1)).float().mean()) < 0.95  # gates inside the clamp too


def test_gate_power_picks_the_power_form_only_for_beta_two_over_k_in_float32():
    f32 = torch.float32
    assert [fused.gate_power(b, f32) for b in (2.0, 1.0, 2.0 / 3.0, 0.5, 0.25)] == [1, 2, 3, 4, 8]
    # not 2 / k for an integer k in [1, 8], or not float32 theta: the general (log-form) kernel
    assert [fused.gate_power(b, f32) for b in (0.6, 0.7, 2.0 / 9.0, 4.0, 2.0 / 3.0 + 1e-6)] == [None] * 5
    assert fused.gate_power(2.0 / 3.0, torch.float64) is None and fused.gate_power(0.5, torch.bfloat16) is None


def test_public_names_exist_and_callables_are_documented():
    names = {}
    exec("from neurosurgeon.functional.fused import *", names)  # what a user's star import gets
    assert {"gate_power", "MAX_GATE_POWER", "fused_hard_concrete_weight"} <= set(fused.__all__)
    for name in fused.__all__:
        obj = names[name]
        assert obj is getattr(fused, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_fused_l0_term_equals_eq12_and_its_gradients_every_way_they_arrive():
    theta, w = _theta_and_weight((300, 257))
    key, lam = nr.key(7), 0.37
    g_out = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    z_ref = F.hard_concrete_mask(theta, key, **HP)
    l0_ref = F.hard_concrete_l0(theta, **HP)
    g_task, = torch.autograd.grad((F.apply_mask(w, z_ref) * g_out).sum(), theta, retain_graph=True)
    g_l0, = torch.autograd.grad(lam * l0_ref, theta)
    with fused.fused_kernels("always"):
        w_eff, _, l0 = fused.fused_hard_concrete_weight(w, theta, key, **HP)
        torch.testing.assert_close(l0, l0_ref, rtol=1e-6, atol=0.0)
        # Task loss and L0 in one backward (the CircuitModel loss): one fused pass.
        g_both, = torch.autograd.grad((w_eff * g_out).sum() + lam * l0, theta)
        torch.testing.assert_close(g_both, g_task + g_l0, rtol=1e-5, atol=1e-6)
        # The L0 term alone, and the two in separate backward calls (saved state survives the first).
        w_eff, _, l0 = fused.fused_hard_concrete_weight(w, theta, key, **HP)
        g_alone, = torch.autograd.grad(lam * l0, theta, retain_graph=True)
        torch.testing.assert_close(g_alone, g_l0, rtol=1e-6, atol=1e-9)
        theta.grad = None
        (w_eff * g_out).sum().backward()
        (lam * l0).backward()
        torch.testing.assert_close(theta.grad, g_task + g_l0, rtol=1e-5, atol=1e-6)
        # theta updated in place before the L0 backward: an error, never a gradient of the new theta.
        _, _, l0 = fused.fused_hard_concrete_weight(w, theta, key, **HP)
        with torch.no_grad():
            theta.add_(1.0)
        with pytest.raises(RuntimeError, match="modified in place"):
            l0.backward()


@pytest.mark.parametrize("make", [lambda: nn.Linear(96, 64), lambda: Conv1D(64, 96)], ids=["Linear", "GPTConv1D"])
def test_module_training_steps_fused_equal_eager(make):
    torch.manual_seed(0)
    base = make()
    eager = ns.HardConcreteLinear.from_layer(base, key=5, mask_bias=True, **{"temperature": 0.5}) \
        if isinstance(base, nn.Linear) else ns.HardConcreteGPTConv1D.from_layer(base, key=5, mask_bias=True, temperature=0.5)
    fused_layer = copy.deepcopy(eager)
    x = torch.randn(4, 96)
    for _ in range(2):  # two steps: the noise counter advances identically on both paths
        with fused.fused_kernels("never"):
            ye = eager(x)
        with fused.fused_kernels("always"):
            assert fused.fused_eligible(fused_layer.weight, fused_layer.weight_mask_params)
            yf = fused_layer(x)
        torch.testing.assert_close(yf, ye, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused_layer.weight_mask, eager.weight_mask.detach(), rtol=1e-6, atol=1e-6)
        assert torch.equal(fused_layer.bias_mask, eager.bias_mask)  # the bias gate stays eager
        assert torch.equal(fused_layer.noise_step, eager.noise_step)
        l0e, l0f = eager.calculate_l0(), fused_layer.calculate_l0()  # fused: the forward's term
        torch.testing.assert_close(l0f, l0e, rtol=1e-6, atol=0.0)
        (ye.square().sum() + 0.5 * l0e).backward()
        (yf.square().sum() + 0.5 * l0f).backward()
    torch.testing.assert_close(fused_layer.weight_mask_params.grad, eager.weight_mask_params.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused_layer.bias_mask_params.grad, eager.bias_mask_params.grad, rtol=1e-5, atol=1e-7)
    assert fused_layer.weight.grad is not None and torch.allclose(fused_layer.weight.grad, eager.weight.grad,
                                                                   rtol=1e-4, atol=1e-6)


def test_eligibility_rules():
    w = torch.zeros(600, 500)
    theta = torch.zeros(600, 500, requires_grad=True)
    small_w, small_theta = torch.zeros(10, 10), torch.zeros(10, 10, requires_grad=True)
    with fused.fused_kernels("auto", min_numel=2**18):
        assert fused.fused_eligible(w, theta)
        assert not fused.fused_eligible(small_w, small_theta)  # below min_numel
        assert not fused.fused_eligible(w, torch.zeros(600, 1, requires_grad=True))  # neuron masks
        assert not fused.fused_eligible(w, theta.detach())  # nothing to train: hard or frozen
        with torch.no_grad():
            assert not fused.fused_eligible(w, theta)
        seen = []
        torch.func.vmap(lambda t: seen.append(fused.fused_eligible(w, t)) or t)(theta.detach().unsqueeze(0).requires_grad_())
        assert seen == [False]  # inside transforms the eager functions compose with them
    with fused.fused_kernels("always"):
        assert fused.fused_eligible(small_w, small_theta)
    with fused.fused_kernels("never"):
        assert not fused.fused_eligible(w, theta)


def test_auto_mode_falls_back_to_eager_with_one_warning_and_always_mode_raises(monkeypatch):
    theta, w = _theta_and_weight((40, 30))
    key = nr.key(1)

    def broken(which):
        def kernel(*args):
            raise RuntimeError("no C++ compiler")
        return kernel

    monkeypatch.setattr(fused, "_compiled_kernel", broken)
    with fused.fused_kernels("always"):
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            fused.fused_hard_concrete_weight(w, theta, key, **HP)
    with fused.fused_kernels("auto", min_numel=0):
        with pytest.warns(RuntimeWarning, match="could not be compiled"):
            w_eff, z, l0 = fused.fused_hard_concrete_weight(w, theta, key, **HP)
        torch.testing.assert_close(l0, F.hard_concrete_l0(theta, **HP))
        z_ref = F.hard_concrete_mask(theta, key, **HP)
        torch.testing.assert_close(z, z_ref.detach(), rtol=1e-6, atol=1e-6)
        assert torch.equal(w_eff, w * z)
        (g,) = torch.autograd.grad(w_eff.sum(), theta)  # the eager backward formula
        torch.testing.assert_close(g, torch.autograd.grad((w * z_ref).sum(), theta)[0], rtol=1e-5, atol=1e-6)
        assert "no C++ compiler" in fused.fused_settings()["failed"]
        assert not fused.fused_eligible(w, theta)  # auto: eager from now on, no more warnings
        layer = ns.HardConcreteLinear(30, 40, key=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer(torch.randn(2, 30))
    assert fused.fused_settings()["failed"] is None  # the context restored the earlier state


def test_settings_validate_and_restore(monkeypatch):
    before = fused.fused_settings()
    for bad, error in (("sometimes", ValueError), ("", ValueError), (None, TypeError), (1, TypeError)):
        with pytest.raises(error, match="mode") as e:
            fused.fused_kernels(bad)
        assert "'auto', 'always', 'never'" in str(e.value) and repr(bad) in str(e.value)
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError)):
        with pytest.raises(error, match=r"min_numel must be a non-negative int, got " + repr(bad)):
            fused.fused_kernels("auto", min_numel=bad)
    assert fused.fused_settings() == before  # rejected calls change nothing
    with fused.fused_kernels("never", min_numel=7):
        assert fused.fused_settings()["mode"] == "never" and fused.fused_settings()["min_numel"] == 7
        with fused.fused_kernels("always"):
            assert fused.fused_settings()["mode"] == "always" and fused.fused_settings()["min_numel"] == 7
        assert fused.fused_settings()["mode"] == "never"
    assert fused.fused_settings() == before
    monkeypatch.setitem(fused._settings, "mode", None)  # as in a fresh process
    monkeypatch.setenv("NEUROSURGEON_FUSED", "Never ")
    assert fused.fused_settings()["mode"] == "never"
    monkeypatch.setitem(fused._settings, "mode", None)
    monkeypatch.setenv("NEUROSURGEON_FUSED", "fast")
    with pytest.raises(ValueError, match="NEUROSURGEON_FUSED.*fast"):
        fused.fused_settings()
    monkeypatch.setitem(fused._settings, "mode", None)


def test_first_compilation_is_logged(monkeypatch, caplog):
    # A ~15 s pause on the first large hard-concrete step must be explained, not look like a hang.
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    with caplog.at_level("INFO", logger="neurosurgeon.functional.fused"):
        fused._compiled_kernel("forward")
        fused._compiled_kernel("forward")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "compiling the fused hard-concrete forward kernel" in messages[0]
    assert "NEUROSURGEON_FUSED=never" in messages[0]
