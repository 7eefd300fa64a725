"""Mask training at model level: the L0 term, L0 statistics, temperature annealing, CircuitModel."""

import math

import pytest
import torch
import torch.nn as nn
from model_zoo import ZOO, build
from transformers import TrainerCallback, TrainerControl, TrainerState

import neurosurgeon as ns


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_l0_penalty_is_the_differentiable_sum_of_layer_l0():
    model = mlp()
    layers = ns.inject_masks(model, nn.Linear, key=0, mask_init_value=0.0)
    model.train()
    penalty = ns.l0_penalty(model)
    assert penalty.item() == pytest.approx(0.5 * (32 + 16))
    assert penalty.item() == pytest.approx(sum(m.calculate_l0().item() for m in layers.values()))
    penalty.backward()
    assert all(m.weight_mask_params.grad is not None for m in layers.values())


def test_l0_penalty_counts_kept_entries_when_hard():
    model = mlp()
    layers = ns.inject_masks(model, nn.Linear, key=0)
    with torch.no_grad():
        layers["0"].weight_mask_params[:2].fill_(1.0)
    assert ns.l0_penalty(model.eval()).item() == 8


def test_l0_statistics_report_total_max_and_per_layer_values():
    model = mlp()
    ns.inject_masks(model, nn.Linear, key=0, mask_bias=True, strategy="hard_concrete")
    stats = ns.l0_statistics(model.train())
    assert stats["max_l0"] == 32 + 8 + 16 + 2
    assert stats["layer_max_l0"] == {"0": 40, "2": 18}
    assert stats["total_l0"] == pytest.approx(sum(stats["layer_l0"].values()))
    assert 0 < stats["fraction"] < 1


def test_model_without_masks_is_a_clear_error():
    with pytest.raises(ValueError, match="no mask layers"):
        ns.l0_penalty(mlp())


def test_temperature_schedule_anneals_exponentially_to_the_final_temperature():
    s = ns.TemperatureSchedule(200.0, epochs=4)
    temps = [s.temperature_at(e) for e in range(6)]
    assert temps[0] == 1.0 and temps[4] == temps[5] == 200.0
    ratios = [temps[i + 1] / temps[i] for i in range(4)]
    assert all(r == pytest.approx(200 ** 0.25) for r in ratios)
    assert ns.TemperatureSchedule(50.0, epochs=2, initial=2.0).temperature_at(1) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="final_temp"):
        ns.TemperatureSchedule(math.inf, epochs=3)
    with pytest.raises(ValueError, match="epochs"):
        ns.TemperatureSchedule(10.0, epochs=0)


def test_temperature_schedule_steps_every_continuous_sparsification_layer():
    model = mlp()
    layers = ns.inject_masks(model, nn.Linear, key=0)
    s = ns.TemperatureSchedule(100.0, epochs=2)
    s.start(model)
    assert s.step(model) == pytest.approx(10.0)
    assert all(m.temperature == pytest.approx(10.0) for m in layers.values())
    s.step(model)
    assert ns.get_temperature(model) == 100.0
    resumed = ns.TemperatureSchedule(1.0, epochs=1)
    resumed.load_state_dict(s.state_dict())
    assert resumed.epoch == 2 and resumed.temperature_at(resumed.epoch) == 100.0


def test_temperature_schedule_refuses_models_without_continuous_sparsification():
    model = mlp()
    ns.inject_masks(model, nn.Linear, key=0, strategy="hard_concrete")
    with pytest.raises(ValueError, match="continuous-sparsification"):
        ns.TemperatureSchedule(10.0, epochs=2).step(model)


def test_trainer_callback_starts_and_steps_the_schedule():
    model = mlp()
    ns.inject_masks(model, nn.Linear, key=0)
    cb = ns.TemperatureSchedule(16.0, epochs=4).callback()
    assert isinstance(cb, TrainerCallback)
    state, control = TrainerState(), TrainerControl()
    ns.set_temperature(model, 3.0)
    cb.on_train_begin(None, state, control, model=model)
    assert ns.get_temperature(model) == 1.0
    for _ in range(2):
        cb.on_epoch_end(None, state, control, model=model)
    assert ns.get_temperature(model) == pytest.approx(4.0)


# -- CircuitModel ----------------------------------------------------------------------------

def _circuit(**config):
    cfg = ns.CircuitConfig(mask_method="continuous_sparsification",
                           mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_init_value": 0.5},
                           target_layers=["transformer.h.*.mlp.c_fc", "lm_head"], freeze_base=True,
                           add_l0=True, l0_lambda=1e-3, key=0, **config)
    return ns.CircuitModel(cfg, build("gpt2"))


def test_circuit_model_adds_the_l0_term_to_the_loss_only_while_training():
    circuit = _circuit()
    batch = ZOO["gpt2"].batch()
    assert circuit.train() is circuit and circuit.training
    plain = circuit.wrapped_model(**batch).loss
    with_l0 = circuit(**batch).loss
    assert with_l0.item() == pytest.approx(plain.item() + 1e-3 * ns.l0_penalty(circuit.wrapped_model).item(), rel=1e-6)
    assert circuit.eval() is circuit and not circuit.training
    assert circuit(**batch).loss.item() == circuit.wrapped_model(**batch).loss.item()


def test_circuit_model_mask_hparams_reach_the_layers():
    circuit = _circuit()
    layers = circuit.mask_layers()
    assert set(layers) == {"transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc", "lm_head"}
    assert all(bool((m.weight_mask_params.detach() == 0.5).all()) for m in layers.values())


def test_circuit_model_call_is_nn_module_call_with_hooks_and_positional_inputs():
    circuit = _circuit()
    assert type(circuit).__call__ is nn.Module.__call__
    seen = []
    circuit.register_forward_hook(lambda mod, args, out: seen.append(out))
    out = circuit(ZOO["gpt2"].batch()["input_ids"])
    assert seen and seen[0] is out


def test_circuit_model_methods():
    circuit = _circuit()
    stats = circuit.compute_l0_statistics()
    assert {"total_l0", "max_l0"} <= set(stats)
    circuit.temperature = 5.0
    assert circuit.temperature == 5.0
    circuit.set_ablate_mode("zero_ablate", force_resample=True)
    assert all(m.ablation == "zero_ablate" and m.force_resample for m in circuit.mask_layers().values())
    circuit.use_masks(False, ["lm_head"])
    assert not circuit.mask_layers()["lm_head"].use_masks
    assert circuit.mask_layers()["transformer.h.0.mlp.c_fc"].use_masks
    circuit.use_masks(True)
    assert all(m.use_masks for m in circuit.mask_layers().values())


def test_circuit_model_trains_end_to_end():
    circuit = _circuit()
    batch = ZOO["gpt2"].batch()
    opt = torch.optim.Adam([p for p in circuit.parameters() if p.requires_grad], lr=0.05)
    circuit.train()
    losses = []
    for _ in range(3):
        loss = circuit(**batch).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_circuit_config_validates_its_fields():
    with pytest.raises(ValueError, match="mask_method"):
        ns.CircuitConfig(mask_method="pruning")
    with pytest.raises(ValueError, match="target_layers"):
        ns.CircuitModel(ns.CircuitConfig(), mlp())


def test_circuit_model_has_the_original_surface():
    circuit = _circuit()
    layers = circuit.mask_layers()
    # new: training (soft masks), the frozen wrapped model itself in eval, its mask layers training
    assert circuit.training and not circuit.wrapped_model.training
    assert all(m.training for m in layers.values()) and circuit.root_model is circuit.wrapped_model
    assert all(k.startswith("wrapped_model.") for k in circuit.state_dict())
    assert circuit._compute_l0_loss().requires_grad
    stats = circuit.compute_l0_statistics()  # hard counts even while training; the mode is restored
    assert isinstance(stats["total_l0"], torch.Tensor) and isinstance(stats["max_l0"], int)
    assert stats["layer2maxl0"] == stats["layer_max_l0"] and set(stats["layer2l0"]) == set(layers)
    assert float(stats["total_l0"]) == sum(float(m.train(False).calculate_l0()) for m in layers.values())
    circuit.train(train_bool=True)
    assert all(m.training for m in layers.values())
    assert circuit.train(False) is circuit and circuit._compute_l0_loss() == 0.0
    circuit.use_masks(value=False, name_list=["wrapped_model.lm_head"])
    assert not layers["lm_head"].use_masks and layers["transformer.h.0.mlp.c_fc"].use_masks
    circuit.set_ablate_mode("zero_ablate", force_resample=True)
    circuit.set_ablate_mode("none")
    assert not any(m.force_resample for m in layers.values())


def test_circuit_model_temperature_warns_and_is_ignored_without_one():
    cfg = ns.CircuitConfig(mask_method="hard_concrete", mask_hparams={"mask_init_percentage": 0.5},
                           target_layers=["lm_head"], key=0)
    circuit = ns.CircuitModel(cfg, build("gpt2"))
    with pytest.warns(UserWarning, match="temperature"):
        assert circuit.temperature is None
    with pytest.warns(UserWarning, match="temperature"):
        circuit.temperature = 3.0
    assert circuit.mask_layers()["lm_head"].temperature == pytest.approx(2 / 3)
