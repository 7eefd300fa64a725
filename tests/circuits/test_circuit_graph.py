"""The circuit graph: its edge count follows the formula, its names and order are fixed, and
architectures without a circuit forward are refused with how to add one."""

import pytest
import torch
from circuit_zoo import build
from hypothesis import given
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM, ViTConfig, ViTModel

from neurosurgeon.circuits import circuit_graph
from neurosurgeon.circuits.graph import CircuitGraph
from neurosurgeon.model.architectures import ARCHITECTURES


def _formula(L, H, G, e, parallel):
    return sum((H + 2 * G + 1) * (e + l * (H + 1)) + (0 if parallel else H) for l in range(L)) + e + L * (H + 1)


def test_gpt2_small_edge_counts():
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    assert circuit_graph(model).num_edges == 32491
    assert circuit_graph(model, embeddings="split").num_edges == 32936


@given(L=st.integers(0, 5), H=st.integers(1, 6), groups=st.integers(1, 3), split=st.booleans(), parallel=st.booleans())
def test_edge_count_formula(L, H, groups, split, parallel):
    G = H if H % groups else H // groups
    e = 2 if split else 1
    g = CircuitGraph(ARCHITECTURES["llama"], L, H, G, ("Tok Embed", "Pos Embed")[:e], (parallel,) * L)
    assert g.num_edges == _formula(L, H, G, e, parallel) == len(g.edges) == len(set(g.edges))
    assert len(g.readers) == L * (H + 2 * G + 1) + 1 and len(g.writers) == e + L * (H + 1)
    assert sum(r * n for r, n in g.segments) == g.num_edges
    assert g.writer_of_edge().shape == g.reader_of_edge().shape == (g.num_edges,)


def test_names_and_order():
    g = circuit_graph(build("gpt2"), embeddings="split")
    assert g.writers[:3] == ("Tok Embed", "Pos Embed", "A0.0") and g.writers[-1] == "MLP 1"
    assert g.edges[0] == "Tok Embed->A0.0.Q" and g.edges[-1] == "MLP 1->Resid End"
    assert g.readers[:5] == ("A0.0.Q", "A0.1.Q", "A0.2.Q", "A0.3.Q", "A0.0.K")
    for i in (0, 17, g.num_edges - 1):
        assert g.edge_index(g.edges[i]) == i
        w, r = g.edges[i].split("->")
        assert g.writers[g.writer_of_edge()[i]] == w and g.readers[g.reader_of_edge()[i]] == r
    mask = g.edge_mask(["A0.1->MLP 0", "Pos Embed->A1.2.V"])
    assert mask.sum() == 2 and g.edge_names(mask) == ["A0.1->MLP 0", "Pos Embed->A1.2.V"]  # edge order: MLP 0 reads before layer 1


def test_unknown_edge_names_near_misses():
    g = circuit_graph(build("gpt2"))
    with pytest.raises(ValueError, match="no edge 'A0.1->MLP 9'.*did you mean"):
        g.edge_index("A0.1->MLP 9")
    with pytest.raises(ValueError, match="no edge"):
        g.edge_mask(["Resid Start->A0.0.Q", "A1.0->A0.0.Q"])


def test_parallel_residual_mlp_does_not_read_its_heads():
    par, seq = circuit_graph(build("gpt_neox")), circuit_graph(build("gpt_neox_sequential"))
    assert par.parallel == (True, True) and seq.parallel == (False, False)
    assert "A0.3->MLP 0" not in par.edges and "A0.3->MLP 0" in seq.edges
    assert "MLP 0->A1.0.Q" in par.edges and "A0.3->MLP 1" in par.edges
    assert seq.num_edges - par.num_edges == 2 * 4


def test_grouped_query_attention_shares_key_value_readers():
    g = circuit_graph(build("llama_gqa"))
    assert (g.heads, g.kv_heads) == (4, 2)
    assert [r for r in g.readers if r.startswith("A0.")] == [
        "A0.0.Q", "A0.1.Q", "A0.2.Q", "A0.3.Q", "A0.0.K", "A0.1.K", "A0.0.V", "A0.1.V"]
    assert g.num_edges == _formula(2, 4, 2, 1, False)


def test_rotary_models_have_one_embedding_writer():
    assert circuit_graph(build("llama_gqa"), embeddings="split").embeddings == ("Tok Embed",)
    assert circuit_graph(build("gpt_neox")).embeddings == ("Resid Start",)


def test_post_norm_graph_allows_nodes_only():
    assert not circuit_graph(build("bert")).edges_allowed
    assert circuit_graph(build("gpt2")).edges_allowed


def test_refusals_name_the_fix():
    with torch.device("meta"):
        vit = ViTModel(ViTConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64))
        qwen3 = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=50))
    for model in (vit, qwen3):
        with pytest.raises(ValueError, match="no circuit forward .*circuit_types"):
            circuit_graph(model)
    with pytest.raises(ValueError, match="no known architecture"):
        circuit_graph(torch.nn.Linear(2, 2).__class__.__new__(type("M", (torch.nn.Module,), {"config": None})))
    with pytest.raises(ValueError, match="embeddings must be one of"):
        circuit_graph(build("gpt2"), embeddings="both")
