"""torch.compile of a masked model's training step (forward, mask, L0 term) runs and matches eager."""

import copy

import pytest
import torch
import torch.nn as nn

import neurosurgeon as ns


@pytest.fixture(autouse=True)
def _compile_in_process():
    # A worker pool costs more than it saves for graphs this small on 2 cores. config.patch
    # restores the setting itself (monkeypatch's undo deletes config entries it did not create).
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1):
        yield


def _model(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    ns.inject_masks(model, nn.Linear, key=0, strategy=strategy)
    return model.train()


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y) + 1e-3 * ns.l0_penalty(model)


@pytest.mark.parametrize("strategy", ["continuous_sparsification", "hard_concrete"])
def test_compiled_training_step_runs_and_matches_eager(strategy):
    eager = _model(strategy)
    compiled = copy.deepcopy(eager)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt_e = torch.optim.SGD([p for p in eager.parameters() if p.requires_grad], lr=0.5)
    opt_c = torch.optim.SGD([p for p in compiled.parameters() if p.requires_grad], lr=0.5)
    loss_c = torch.compile(_loss)
    for _ in range(3):
        for model, opt, fn in ((eager, opt_e, _loss), (compiled, opt_c, loss_c)):
            opt.zero_grad()
            loss = fn(model, x, y)
            loss.backward()
            opt.step()
            if fn is loss_c:
                ns.advance_noise(model)  # a compiled forward mutates nothing: the loop advances the noise
            model.last_loss = loss.detach()
        torch.testing.assert_close(compiled.last_loss, eager.last_loss, rtol=1e-5, atol=1e-6)
    for (n, pe), (_, pc) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-5, atol=1e-6, msg=n)
    for (n, be), (_, bc) in zip(eager.named_buffers(), compiled.named_buffers()):
        assert torch.equal(bc, be), n  # keys and hard-concrete step counters advance alike


def test_compiled_eval_forward_with_an_ablation_matches_eager():
    model = _model("continuous_sparsification")
    with torch.no_grad():
        for layer in ns.mask_layers(model).values():
            layer.weight_mask_params.uniform_(-1, 0.5)
    model.eval()
    ns.set_ablation(model, "zero_ablate")
    x = torch.randn(4, 6)
    torch.testing.assert_close(torch.compile(model)(x), model(x))


def test_advance_noise_moves_each_hard_concrete_counter_once_and_leaves_other_strategies():
    hc = _model("hard_concrete")
    tied = nn.Sequential(hc[0], hc[0])  # one layer at two paths: one counter
    ns.advance_noise(tied, 2)
    assert int(hc[0].noise_step) == 2 and int(hc[3].noise_step) == 0
    cs = _model("continuous_sparsification")
    ns.advance_noise(cs)
    assert all(int(m.noise_step) == 0 for m in ns.mask_layers(cs).values())
    with pytest.raises(ValueError, match="steps"):
        ns.advance_noise(hc, -1)
