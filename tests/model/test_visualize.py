"""Visualizer: every bar's numbers equal a hand count, at tensor, layer and block granularity."""

import matplotlib.pyplot as plt
import pytest
import torch
from model_zoo import build

import neurosurgeon as ns

GPT2_TARGETS = ["transformer.h.*.attn.*", "transformer.h.*.mlp.*"]
BERT_TARGETS = ["**.attention.self.*", "**.attention.output.dense", "**.intermediate.dense", "**.layer.*.output.dense"]


def masked(name, targets, seed, strategy="continuous_sparsification", **kw):
    model = build(name)
    ns.inject_masks(model, targets, strategy=strategy, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ns.mask_layers(model).values():
            if strategy != "magnitude_pruning":
                p = layer.weight_mask_params
                p.copy_(torch.rand(p.shape, generator=g) - 0.6)
    return model


def hand_masks(model):
    """Each weight tensor of a transformer layer at the parameter's shape: its hard mask where
    masked (theta > 0), all ones otherwise; biases left out."""
    theta = {f"{n}.weight": (m.weight_mask_params > 0) for n, m in ns.mask_layers(model).items()}
    return {n: theta.get(n, torch.ones(p.shape, dtype=torch.bool)) for n, p in model.named_parameters()
            if ".h." in n or ".layer." in n or ".layers." in n
            if not n.endswith(("_mask_params", ".bias"))}


def shares(a, b=None):
    """The four bar segments of masks ``a`` (and ``b``), counted by hand."""
    total = sum(m.numel() for m in a)
    if b is None:
        b = [torch.zeros_like(m) for m in a]
    both = sum(int((x & y).sum()) for x, y in zip(a, b))
    ka, kb = sum(int(x.sum()) for x in a), sum(int(y.sum()) for y in b)
    return {"model_1": (ka - both) / total, "model_2": (kb - both) / total, "intersection": both / total,
            "unused": (total - ka - kb + both) / total}


def assert_bar(overlap, expected):
    got = overlap.shares()
    assert got == pytest.approx(expected, abs=1e-12)


def visualize(models, **kw):
    return ns.Visualizer(ns.VisualizerConfig(models, outfile=None, **kw)).bars()


@pytest.mark.parametrize("two", [False, True])
def test_tensor_and_layer_bars_equal_hand_counts(two):
    models = [masked("gpt2", GPT2_TARGETS, 1), masked("gpt2", GPT2_TARGETS, 2)][: 1 + two]
    hands = [hand_masks(m) for m in models]
    tensors = visualize(models, plot_granularity="tensor")
    layers = visualize(models, plot_granularity="layer")
    for layer in ("transformer.h.0", "transformer.h.1"):
        names = [n for n in hands[0] if n.startswith(layer + ".")]
        assert [label for label, _ in tensors[layer]] == [n[len(layer) + 1:] for n in names]
        for (label, o), n in zip(tensors[layer], names):
            assert_bar(o, shares([hands[0][n]], [hands[1][n]] if two else None))
        # The layer's share is summed over all its tensors, not read off its last one.
        (_, o), = layers[layer]
        assert_bar(o, shares([hands[0][n] for n in names], [hands[1][n] for n in names] if two else None))
        assert o.shares()["model_1" if not two else "unused"] != tensors[layer][-1][1].shares()["model_1" if not two else "unused"]


@pytest.mark.parametrize("two", [False, True])
def test_gpt2_block_bars_split_c_attn_and_c_proj_into_heads_and_put_c_proj_of_the_mlp_in_the_mlp(two):
    models = [masked("gpt2", GPT2_TARGETS, 3), masked("gpt2", GPT2_TARGETS, 4)][: 1 + two]
    hands = [hand_masks(m) for m in models]
    blocks = visualize(models, plot_granularity="block")
    d = 16
    for layer in range(2):
        p = f"transformer.h.{layer}."
        rows = blocks[f"transformer.h.{layer}"]
        assert [label for label, _ in rows] == ["head 0", "head 1", "mlp"]
        for head in range(2):
            cols = torch.cat([torch.arange(part * 32 + head * d, part * 32 + (head + 1) * d) for part in range(3)])
            r = slice(head * d, (head + 1) * d)
            pieces = [[h[p + "attn.c_attn.weight"][:, cols], h[p + "attn.c_proj.weight"][r]] for h in hands]
            assert_bar(rows[head][1], shares(pieces[0], pieces[1] if two else None))
        mlp = [[h[p + "mlp.c_fc.weight"], h[p + "mlp.c_proj.weight"]] for h in hands]
        assert_bar(rows[2][1], shares(mlp[0], mlp[1] if two else None))


def test_two_model_block_share_of_model_2_comes_from_model_2s_mask():
    empty = masked("gpt2", GPT2_TARGETS, 5)
    with torch.no_grad():
        for layer in ns.mask_layers(empty).values():
            layer.weight_mask_params.fill_(-1.0)
    full = masked("gpt2", GPT2_TARGETS, 6)
    bars = visualize([full, empty], plot_granularity="block")
    for rows in bars.values():
        for _, o in rows:
            s = o.shares()
            assert s["model_2"] == 0 and s["intersection"] == 0 and s["unused"] >= 0
            assert s["model_1"] + s["unused"] == pytest.approx(1.0)


@pytest.mark.parametrize("two", [False, True])
def test_bert_block_mlp_is_intermediate_and_output_dense_but_not_attention_output_dense(two):
    models = [masked("bert", BERT_TARGETS, 7), masked("bert", BERT_TARGETS, 8)][: 1 + two]
    hands = [hand_masks(m) for m in models]
    rows = visualize(models, plot_granularity="block")["bert.encoder.layer.0"]
    p = "bert.encoder.layer.0."
    mlp = [[h[p + "intermediate.dense.weight"], h[p + "output.dense.weight"]] for h in hands]
    assert_bar(rows[-1][1], shares(mlp[0], mlp[1] if two else None))
    assert rows[-1][1].total == 37 * 32 * 2
    # nn.Linear stores (out, in): q/k/v split their rows into heads, attention.output.dense its columns.
    r, c = slice(0, 16), slice(0, 16)
    head0 = [[h[p + f"attention.self.{x}.weight"][r] for x in ("query", "key", "value")]
             + [h[p + "attention.output.dense.weight"][:, c]] for h in hands]
    assert_bar(rows[0][1], shares(head0[0], head0[1] if two else None))


def test_vit_blocks_have_heads_and_mlp():
    model = masked("vit", ["vit.layers.*.attention.*", "vit.layers.*.mlp.*"], 9)
    hand = hand_masks(model)
    rows = visualize([model], plot_granularity="block")["vit.layers.1"]
    assert [label for label, _ in rows] == ["head 0", "head 1", "mlp"]
    assert_bar(rows[2][1], shares([hand["vit.layers.1.mlp.fc1.weight"], hand["vit.layers.1.mlp.fc2.weight"]]))


def test_magnitude_pruning_plots_its_kept_share_not_fully_kept():
    model = masked("gpt2", ["transformer.h.*.mlp.*"], 0, strategy="magnitude_pruning", prune_percentage=0.25)
    rows = visualize([model], plot_granularity="tensor", plot_full_network=False)
    for layer_rows in rows.values():
        assert [label for label, _ in layer_rows] == ["mlp.c_fc.weight", "mlp.c_proj.weight"]
        for _, o in layer_rows:
            assert o.shares()["model_1"] == pytest.approx(0.75, abs=1e-3)


def test_masked_layers_only_keeps_layers_with_a_mask_and_bias_when_asked():
    model = masked("gpt2", ["transformer.h.1.mlp.c_fc"], 0, mask_bias=True)
    layers = visualize([model], plot_granularity="layer", plot_full_network=False)
    assert list(layers) == ["transformer.h.1"]
    tensors = visualize([model], plot_granularity="tensor", plot_full_network=False, visualize_bias=True)
    assert [label for label, _ in tensors["transformer.h.1"]] == ["mlp.c_fc.weight", "mlp.c_fc.bias"]


def test_plot_returns_a_closed_figure_with_the_model_labels_in_the_legend(tmp_path):
    models = [masked("gpt2", GPT2_TARGETS, 1), masked("gpt2", GPT2_TARGETS, 2)]
    before = plt.get_fignums()
    fig = ns.Visualizer(ns.VisualizerConfig(models, model_labels=["add", "copy"], plot_granularity="block",
                                            outfile=str(tmp_path / "f.svg"), format="svg", figsize=(6, 8))).plot()
    assert plt.get_fignums() == before
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:3] == ["add", "both", "copy"]
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_num_heads_and_hidden_size_override_and_check_the_head_split():
    model = masked("gpt2", GPT2_TARGETS, 1)
    rows = visualize([model], plot_granularity="block", num_heads=4, hidden_size=32)["transformer.h.0"]
    assert [label for label, _ in rows] == ["head 0", "head 1", "head 2", "head 3", "mlp"]
    with pytest.raises(ValueError, match="hidden_size=48"):
        visualize([model], plot_granularity="block", hidden_size=48)


@pytest.mark.parametrize("kw,match", [
    (dict(plot_granularity="neuron"), "plot_granularity"),
    (dict(plot_granularity="block", visualize_bias=True), "visualize_bias"),
    (dict(model_architecture="lstm"), "unknown architecture"),
    (dict(alpha=1.5), "alpha"),
    (dict(num_heads=0), "num_heads"),
])
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        ns.VisualizerConfig([masked("gpt2", GPT2_TARGETS, 1)], **kw)


def test_config_rejects_three_models_and_a_model_without_masks():
    m = masked("gpt2", GPT2_TARGETS, 1)
    with pytest.raises(ValueError, match="one or two"):
        ns.VisualizerConfig([m, m, m])
    with pytest.raises(ValueError, match="no mask layers"):
        ns.VisualizerConfig([build("gpt2")])
