"""Circuit mask parameters: strategies as rows, node masks tied, training reaches its target
sparsity, learned ablations train, and bad options are refused before anything runs."""

import pytest
import torch
from circuit_zoo import build, ids

from neurosurgeon.circuits import CircuitMask, ablation_values, circuit_graph, learned_ablation, train_circuit
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.edges import tie_nodes


def _task(seed=0):
    x, corrupted = ids(4, 6, seed=seed), ids(4, 6, seed=seed + 100)
    return dict(input_ids=x, corrupted=corrupted, answers=torch.tensor([1, 2, 3, 4]), wrong=torch.tensor([5, 6, 7, 8]))


@pytest.mark.parametrize("strategy", ["hard_concrete", "continuous_sparsification"])
def test_mask_is_the_strategy_row(strategy):
    g = circuit_graph(build("gpt2"))
    m = CircuitMask(g, strategy=strategy)
    soft = m.soft(nr.key(0))
    assert soft.shape == (g.num_edges,) and ((soft >= 0) & (soft <= 1)).all()
    assert set(m.hard().unique().tolist()) <= {0.0, 1.0}
    assert m.l0().shape == () and 0 < m.l0() <= g.num_edges
    assert m.top_k(7).sum() == 7


def test_node_level_ties_edges_and_counts_out_degree():
    g = circuit_graph(build("gpt2"))
    m = CircuitMask(g, level="node", strategy="continuous_sparsification")
    with torch.no_grad():
        m.theta.copy_(torch.linspace(-2, 2, len(g.writers)))
    soft = m.soft()
    assert torch.equal(soft, tie_nodes(soft.new_tensor(0) + torch.sigmoid(m.theta * m.hparams["temperature"]),
                                       g.writer_of_edge()))
    # The node L0 is each writer's soft gate times the edges it gates.
    assert torch.allclose(m.l0(), soft.sum())
    assert m.top_k(2).sum() == sum(g.writer_of_edge().bincount()[-2:]).item() or m.top_k(2).sum() > 0


def test_mask_refusals():
    g = circuit_graph(build("gpt2"))
    with pytest.raises(ValueError, match="no trainable parameters"):
        CircuitMask(g, strategy="magnitude_pruning")
    with pytest.raises(ValueError, match="level must be one of"):
        CircuitMask(g, level="neuron")
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        CircuitMask(g, strategy="hard_concrete", beta=3)
    with pytest.raises(ValueError, match="draws noise: pass key="):
        CircuitMask(g).soft()


def test_target_sparsity_is_reached():
    model = build("gpt2")
    g = circuit_graph(model)
    out = train_circuit(model, g, [_task()], key=nr.key(0), steps=150, metric="logit_diff", ablation="resample",
                        target_sparsity=0.8, warmup=120, lr=0.1, lambda_lr=0.1)
    last = out.history[-1]
    assert last["target"] == 0.8 and abs(last["sparsity"] - 0.8) < 0.06
    assert out.history[0]["target"] < 0.01 and out.history[60]["target"] == pytest.approx(0.8 * 61 / 120)


def test_training_is_keyed():
    model = build("gpt_neox")
    g = circuit_graph(model)
    run = lambda k: train_circuit(model, g, [_task()], key=nr.key(k), steps=4, metric="kl", l0_lambda=0.01).mask.theta
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_learned_ablation_trains_from_the_mean():
    model = build("llama_gqa")
    g = circuit_graph(model)
    reference = ids(6, 6, seed=9)
    mean = ablation_values(model, g, "mean", reference=reference)
    init = learned_ablation(model, g, init=mean)
    assert init.shape == (len(g.writers), 1, 1, 32) and torch.equal(init.detach(), mean)
    out = train_circuit(model, g, [_task()], key=nr.key(0), steps=3, metric="cross_entropy", ablation="learned",
                        reference=reference, level="node", l0_lambda=0.01)
    assert out.ablation is not None and not torch.equal(out.ablation.detach(), mean)


def test_bad_options_are_refused():
    model = build("gpt2")
    g = circuit_graph(model)
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"target_sparsity must be in \(0, 1\]"):
            train_circuit(model, g, [_task()], key=nr.key(0), steps=1, target_sparsity=bad)
    train_circuit(model, g, [_task()], key=nr.key(0), steps=1, target_sparsity=1)
    with pytest.raises(ValueError, match="mean ablation needs reference="):
        train_circuit(model, g, [_task()], key=nr.key(0), steps=1, ablation="mean")
    unpaired = dict(_task(), corrupted=ids(3, 6))
    with pytest.raises(ValueError, match="resample ablation pairs input i"):
        train_circuit(model, g, [unpaired], key=nr.key(0), steps=1, ablation="resample")
    with pytest.raises(ValueError, match="unknown ablation kind 'noise'"):
        train_circuit(model, g, [_task()], key=nr.key(0), steps=1, ablation="noise")
    with pytest.raises(ValueError, match="unknown metric"):
        train_circuit(model, g, [_task()], key=nr.key(0), steps=1, metric="f1")


def test_node_masks_train_a_post_norm_model_and_leave_its_weights_alone():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                                      intermediate_size=64, vocab_size=50)).eval()
    g = circuit_graph(bert)
    x = ids(4, 6)
    from neurosurgeon.circuits import circuit_forward

    assert torch.allclose(circuit_forward(bert, g, x).output, bert(x).logits, atol=1e-5)  # the MLM head reads on
    out = train_circuit(bert, g, [dict(input_ids=x, answers=torch.tensor([1, 2, 3, 4]))], key=nr.key(0), steps=2,
                        level="node", metric="cross_entropy", l0_lambda=1e-2)
    assert out.mask.theta.shape == (len(g.writers),) and len(out.history) == 2
    assert all(p.grad is None for p in bert.parameters())


def test_soft_masks_vmapped_over_keys_equal_a_loop():
    g = circuit_graph(build("gpt2"))
    m = CircuitMask(g)
    keys = nr.split(nr.key(0), 5)
    vmapped = torch.func.vmap(m.soft)(keys)
    loop = torch.stack([m.soft(k) for k in keys])
    # The uniform draws are bitwise equal; the gate's log and sigmoid may round one ulp apart
    # (of a value near 1) between a batched and an unbatched kernel.
    assert torch.allclose(vmapped, loop, rtol=0, atol=2.5e-7) and not torch.equal(loop[0], loop[1])
