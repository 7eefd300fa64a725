"""Circuit files: our JSON, the EAP-IG / MIB circuit-graph JSON and auto-circuit's edge names read and
write through the graph's edge order, round trips are the identity, and bad files are refused by name.

``data/eap_ig_example.json`` was written by hannamw/EAP-IG's own ``Graph.to_json`` for the tiny GPT-2
below (``Graph.from_model`` with ``n_layers=2, n_heads=4, parallel_attn_mlp=False, d_model=32``,
seeded random edge scores, ``apply_greedy(20)``, which prunes to 13 edges), so reading it and
writing it back must give the same bytes.
"""

import json
import pathlib
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from neurosurgeon.circuits import circuit_graph
from neurosurgeon.circuits.formats import (
    from_auto_circuit, from_circuit_json, from_eap_ig, to_auto_circuit, to_circuit_json, to_eap_ig,
)

EXAMPLE = pathlib.Path(__file__).parent / "data" / "eap_ig_example.json"
_SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50,
              bos_token_id=0, eos_token_id=0)
# Only the config matters to the graph; meta weights keep these free.
MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=50, n_positions=16,
                                               bos_token_id=0, eos_token_id=0)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**_SMALL)),  # parallel residual
    "gpt_neox_sequential": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(use_parallel_residual=False, **_SMALL)),
    "llama_gqa": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **_SMALL)),  # H = 4, G = 2
}
FAMILIES = list(MODELS)
_GRAPHS = {}


def graph_of(family, embeddings="joint"):
    key = (family, embeddings)
    if key not in _GRAPHS:
        with torch.device("meta"):
            model = MODELS[family]()
        _GRAPHS[key] = circuit_graph(model, embeddings=embeddings)
    return _GRAPHS[key]


def tiny_gpt2_graph(embeddings="joint"):
    """The example's model: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=50,
    n_positions=16))."""
    return graph_of("gpt2", embeddings)


def random_circuit(graph, seed, p=0.3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.num_edges, generator=gen) < p).float(), torch.randn(graph.num_edges, generator=gen)


# -- the shipped EAP-IG example ----------------------------------------------------------------

def test_the_example_reads_and_writes_back_byte_for_byte(tmp_path):
    graph = tiny_gpt2_graph()
    mask, scores = from_eap_ig(graph, EXAMPLE)
    assert int(mask.sum()) == 13 and scores.dtype == torch.float32
    out = tmp_path / "circuit.json"
    data = to_eap_ig(graph, mask, scores, d_model=32, path=out)
    assert out.read_bytes() == EXAMPLE.read_bytes()
    assert data == json.loads(EXAMPLE.read_text())


def test_the_example_has_their_documented_layout():
    data = json.loads(EXAMPLE.read_text())
    assert list(data) == ["cfg", "nodes", "edges"]
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    assert list(data["nodes"]) == ["input", *[f"a0.h{h}" for h in range(4)], "m0",
                                   *[f"a1.h{h}" for h in range(4)], "m1", "logits"]
    names = list(data["edges"])
    assert len(names) == tiny_gpt2_graph().num_edges == 110
    assert names[:4] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->a0.h1<q>"]
    assert names[-1] == "m1->logits"
    assert all(re.fullmatch(r"(input|a\d\.h\d|m\d)->(a\d\.h\d<[qkv]>|m\d|logits)", n) for n in names)
    assert all(set(e) == {"score", "in_graph"} for e in data["edges"].values())


def test_the_example_maps_onto_our_edge_names():
    graph = tiny_gpt2_graph()
    data = json.loads(EXAMPLE.read_text())
    mask, scores = from_eap_ig(graph, data)
    for name, edge in data["edges"].items():
        parent, child = name.split("->")
        qkv = re.search(r"<([qkv])>$", child)
        child = re.sub(r"<[qkv]>$", "", child)

        def rename(node):
            if node == "input":
                return "Resid Start"
            if node == "logits":
                return "Resid End"
            if node.startswith("m"):
                return f"MLP {node[1:]}"
            layer, head = node[1:].split(".h")
            return f"A{layer}.{head}"

        ours = f"{rename(parent)}->{rename(child)}" + (f".{qkv.group(1).upper()}" if qkv else "")
        i = graph.edge_index(ours)
        assert mask[i] == float(edge["in_graph"]) and scores[i] == torch.tensor(edge["score"])


def test_written_nodes_follow_their_prune_rule():
    graph = tiny_gpt2_graph()
    # An edge out of a head nothing feeds: the head has an outgoing edge but no incoming one.
    data = to_eap_ig(graph, graph.edge_mask(["Resid Start->A0.1.V", "A0.1->Resid End", "A1.2->Resid End"]),
                     d_model=32)
    in_graph = {name for name, node in data["nodes"].items() if node["in_graph"]}
    assert in_graph == {"input", "a0.h1", "logits"}


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@given(seed=st.integers(0, 2**16), p=st.sampled_from([0.0, 0.3, 1.0]))
def test_ours_to_eap_ig_to_ours_is_the_identity(family, seed, p):
    graph = graph_of(family)
    mask, scores = random_circuit(graph, seed, p)
    back_mask, back_scores = from_eap_ig(graph, to_eap_ig(graph, mask, scores, d_model=32))
    assert torch.equal(back_mask, mask)
    assert torch.equal(back_scores, scores)  # exact: a group's copies (H/G = 2 here) add back in float64


def test_the_trip_through_a_file_is_the_identity(tmp_path):
    graph = graph_of("gpt_neox")
    mask, scores = random_circuit(graph, 3)
    to_eap_ig(graph, mask, scores, d_model=32, path=tmp_path / "c.json")
    back_mask, back_scores = from_eap_ig(graph, str(tmp_path / "c.json"))
    assert torch.equal(back_mask, mask) and torch.equal(back_scores, scores)


def test_mask_only_and_scores_only():
    graph = tiny_gpt2_graph()
    mask, scores = random_circuit(graph, 1)
    only_scores = to_eap_ig(graph, scores=scores, d_model=32)
    assert not any(e["in_graph"] for e in only_scores["edges"].values())  # as their graph before apply_topn
    assert torch.equal(from_eap_ig(graph, only_scores)[1], scores)
    only_mask = to_eap_ig(graph, mask, d_model=32)
    assert all(e["score"] == 0.0 for e in only_mask["edges"].values())
    # MIB's "multiple circuits" files carry in_graph without scores.
    for edge in only_mask["edges"].values():
        del edge["score"]
    back_mask, back_scores = from_eap_ig(graph, only_mask)
    assert torch.equal(back_mask, mask) and back_scores is None


def test_missing_edges_are_out_with_score_zero():
    graph = tiny_gpt2_graph()
    data = {"cfg": {"n_layers": 2, "n_heads": 4}, "nodes": {},
            "edges": {"m0->a1.h3<v>": {"score": -2.0, "in_graph": True}}}
    mask, scores = from_eap_ig(graph, data)
    assert graph.edge_names(mask) == ["MLP 0->A1.3.V"]
    assert scores[graph.edge_index("MLP 0->A1.3.V")] == -2.0 and int((scores != 0).sum()) == 1


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa"])
def test_ours_to_auto_circuit_to_ours_is_the_identity(family):
    for embeddings in ("joint", "split"):
        graph = graph_of(family, embeddings)
        mask, _ = random_circuit(graph, 5)
        if len(graph.embeddings) == 2:  # Resid Start keeps both embeddings' edges into a reader, or neither
            tok = [i for i, e in enumerate(graph.edges) if e.startswith("Tok Embed->")]
            pos = [graph.edge_index(graph.edges[i].replace("Tok Embed", "Pos Embed")) for i in tok]
            mask[pos] = mask[tok]
        assert torch.equal(from_auto_circuit(graph, to_auto_circuit(graph, mask)), mask)


def test_auto_circuit_names_are_ours_for_multi_head_attention():
    graph = graph_of("gpt_neox")
    mask, _ = random_circuit(graph, 7)
    assert to_auto_circuit(graph, mask) == set(graph.edge_names(mask))


def test_auto_circuit_edges_combined_destinations_and_objects():
    graph = tiny_gpt2_graph()

    class Edge:  # auto_circuit.types.Edge exposes its name as .name
        name = "MLP 0->Resid End"

    mask = from_auto_circuit(graph, ["Resid Start->A1.0", Edge()])
    assert graph.edge_names(mask) == ["Resid Start->A1.0.Q", "Resid Start->A1.0.K", "Resid Start->A1.0.V",
                                      "MLP 0->Resid End"]


# -- grouped-query attention and split embeddings -------------------------------------------------

def test_grouped_key_value_edges_become_one_per_query_head():
    graph = graph_of("llama_gqa")  # H = 4, G = 2
    assert (graph.heads, graph.kv_heads) == (4, 2)
    data = to_eap_ig(graph, graph.edge_mask(["Resid Start->A1.1.K"]), torch.full((graph.num_edges,), 3.0), d_model=32)
    kept = [name for name, e in data["edges"].items() if e["in_graph"]]
    assert kept == ["input->a1.h2<k>", "input->a1.h3<k>"]
    assert data["edges"]["input->a1.h2<k>"]["score"] == 1.5 and data["edges"]["input->a1.h2<q>"]["score"] == 3.0
    assert data["cfg"]["n_heads"] == 4
    assert to_auto_circuit(graph, graph.edge_mask(["A0.0->A1.0.V"])) == {"A0.0->A1.0.V", "A0.0->A1.1.V"}


def test_disagreeing_heads_of_a_group_need_a_merge_rule():
    graph = graph_of("llama_gqa")
    data = {"cfg": {"n_layers": 2, "n_heads": 4}, "nodes": {},
            "edges": {"input->a1.h2<k>": {"score": 1.0, "in_graph": True},
                      "input->a1.h3<k>": {"score": 0.5, "in_graph": False}}}
    with pytest.raises(ValueError, match=r"'Resid Start->A1\.1\.K' is kept for 1 of its 2 query heads.*kv_merge"):
        from_eap_ig(graph, data)
    mask, scores = from_eap_ig(graph, data, kv_merge="any")
    assert graph.edge_names(mask) == ["Resid Start->A1.1.K"] and scores[graph.edge_index("Resid Start->A1.1.K")] == 1.5
    assert from_eap_ig(graph, data, kv_merge="all")[0].sum() == 0
    with pytest.raises(ValueError, match="kv_merge must be one of"):
        from_eap_ig(graph, data, kv_merge="first")
    with pytest.raises(ValueError, match="query heads"):
        from_auto_circuit(graph, ["A0.0->A1.0.K"])
    assert graph.edge_names(from_auto_circuit(graph, ["A0.0->A1.0.K"], kv_merge="any")) == ["A0.0->A1.0.K"]
    assert from_auto_circuit(graph, ["A0.0->A1.0.K"], kv_merge="all").sum() == 0


def test_split_embeddings_map_input_to_the_token_embedding():
    graph = tiny_gpt2_graph("split")
    mask, scores = from_eap_ig(graph, EXAMPLE)
    pos = [i for i, e in enumerate(graph.edges) if e.startswith("Pos Embed->")]
    assert mask[pos].all() and not scores[pos].any()  # EAP-IG never ablates positions
    joint_mask, joint_scores = from_eap_ig(tiny_gpt2_graph(), EXAMPLE)
    assert {n.replace("Tok Embed", "Resid Start") for n in graph.edge_names(mask) if not n.startswith("Pos")} \
        == set(tiny_gpt2_graph().edge_names(joint_mask))
    assert to_eap_ig(graph, mask, scores, d_model=32) == json.loads(EXAMPLE.read_text())
    mask[pos[0]] = 0
    with pytest.raises(ValueError, match=r"no node for \['Pos Embed'\].*Pos Embed->"):
        to_eap_ig(graph, mask, scores, d_model=32)


def test_auto_circuit_resid_start_is_both_split_embeddings():
    graph = tiny_gpt2_graph("split")
    assert graph.edge_names(from_auto_circuit(graph, ["Resid Start->MLP 0"])) == ["Tok Embed->MLP 0",
                                                                                   "Pos Embed->MLP 0"]
    with pytest.raises(ValueError, match="keep both or neither"):
        to_auto_circuit(graph, graph.edge_mask(["Tok Embed->MLP 0"]))


# -- our JSON ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_our_json_round_trip(family, tmp_path):
    graph = graph_of(family, "split")
    mask, scores = random_circuit(graph, 11)
    data = to_circuit_json(graph, mask, scores, path=tmp_path / "c.json")
    assert list(data["edges"]) == list(graph.edges)
    assert data["config"] == {"layers": 2, "heads": 4, "kv_heads": graph.kv_heads,
                              "embeddings": list(graph.embeddings), "parallel": list(graph.parallel)}
    back_mask, back_scores = from_circuit_json(graph, tmp_path / "c.json")
    assert torch.equal(back_mask, mask) and torch.equal(back_scores, scores)
    back_mask, back_scores = from_circuit_json(graph, to_circuit_json(graph, mask.bool()))
    assert torch.equal(back_mask, mask) and back_scores is None


def test_our_json_missing_edges_are_out_and_unscored():
    graph = tiny_gpt2_graph()
    data = to_circuit_json(graph, graph.edge_mask(["A0.0->MLP 0"]), torch.ones(graph.num_edges))
    data["edges"] = {"A0.0->MLP 0": data["edges"]["A0.0->MLP 0"]}
    mask, scores = from_circuit_json(graph, data)
    assert graph.edge_names(mask) == ["A0.0->MLP 0"]
    assert scores[graph.edge_index("A0.0->MLP 0")] == 1 and int(scores.isnan().sum()) == graph.num_edges - 1


# -- errors --------------------------------------------------------------------------------------

def test_our_json_refuses_another_graph_or_a_bad_edge():
    graph = tiny_gpt2_graph()
    data = to_circuit_json(graph, graph.edge_mask(["A0.0->MLP 0"]))
    with pytest.raises(ValueError, match=r"config embeddings=\['Resid Start'\] does not match"):
        from_circuit_json(graph_of("gpt2", "split"), data)
    with pytest.raises(ValueError, match="architecture 'gpt2', the graph is 'gpt_neox'"):
        from_circuit_json(graph_of("gpt_neox"), data)
    bigger = json.loads(json.dumps(data))
    bigger["config"]["layers"] = 3
    with pytest.raises(ValueError, match="config layers=3 does not match the graph's 2"):
        from_circuit_json(graph, bigger)
    bad = json.loads(json.dumps(data))
    bad["edges"]["A0.0->MLP 9"] = {"in_circuit": True}
    with pytest.raises(ValueError, match=r"no edge 'A0.0->MLP 9'.*did you mean"):
        from_circuit_json(graph, bad)
    bad = json.loads(json.dumps(data))
    bad["edges"]["A0.0->MLP 0"] = {"in_circuit": 1}
    with pytest.raises(ValueError, match="'in_circuit' must be true or false"):
        from_circuit_json(graph, bad)
    with pytest.raises(ValueError, match="not a neurosurgeon-circuit version 1"):
        from_circuit_json(graph, {**data, "version": 2})


def test_masks_and_scores_are_checked():
    graph = tiny_gpt2_graph()
    with pytest.raises(ValueError, match=r"mask must have shape \(110,\)"):
        to_circuit_json(graph, torch.ones(3))
    with pytest.raises(ValueError, match="mask must be binary"):
        to_eap_ig(graph, torch.full((110,), 0.5), d_model=32)
    with pytest.raises(ValueError, match=r"scores must have shape \(110,\)"):
        to_eap_ig(graph, scores=torch.ones(2), d_model=32)
    with pytest.raises(ValueError, match="give a mask, scores or both"):
        to_eap_ig(graph, d_model=32)
    with pytest.raises(ValueError, match="mask must be binary"):
        to_auto_circuit(graph, torch.full((110,), 2.0))
    with pytest.raises(TypeError, match="a dict or a path"):
        from_eap_ig(graph, 3)


def test_eap_ig_files_for_another_graph_or_with_bad_names_are_refused():
    graph = tiny_gpt2_graph()
    data = json.loads(EXAMPLE.read_text())
    with pytest.raises(ValueError, match=r"missing \['nodes'\]"):
        from_eap_ig(graph, {"cfg": data["cfg"], "edges": {}})
    with pytest.raises(ValueError, match="cfg n_heads=4 does not match the graph's 3"):
        with torch.device("meta"):
            three_heads = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=3, n_embd=12))
        from_eap_ig(circuit_graph(three_heads), data)
    with pytest.raises(ValueError, match="parallel_attn_mlp=False does not match the graph's True"):
        from_eap_ig(graph_of("gpt_neox"), data)
    for name in ["m1->a0.h0<q>", "input->a0.h0", "input->m0<q>", "a0.h9->logits"]:
        bad = {**data, "edges": {name: {"score": 0.0, "in_graph": True}}}
        with pytest.raises(ValueError, match=f"no EAP-IG edge {re.escape(repr(name))}"):
            from_eap_ig(graph, bad)
    bad = {**data, "nodes": {**data["nodes"], "a7.h0": {"in_graph": False}}}
    with pytest.raises(ValueError, match="no EAP-IG node 'a7.h0'"):
        from_eap_ig(graph, bad)
    bad = {**data, "edges": {"input->a0.h0<q>": {"score": 0.0}}}
    with pytest.raises(ValueError, match="'in_graph' must be true or false"):
        from_eap_ig(graph, bad)
    neurons = {**data, "nodes": {**data["nodes"], "m0": {"in_graph": True, "neurons": [True] * 31 + [False]}}}
    with pytest.raises(ValueError, match="keeps 31 of its 32 neurons"):
        from_eap_ig(graph, neurons)
    with pytest.raises(ValueError, match=r"auto-circuit edge 'A1.0->A0.0.Q' is not in this graph"):
        from_auto_circuit(graph, ["A1.0->A0.0.Q"])
    with pytest.raises(ValueError, match="expected an edge name"):
        from_auto_circuit(graph, [3])
