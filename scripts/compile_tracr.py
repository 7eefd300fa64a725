"""Compile RASP programs with Tracr and write the shipped ground-truth models to ``tests/circuits/data/tracr/``.

Tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability",
arXiv 2301.05062) compiles a RASP program into transformer weights whose circuit is known. For
every program in :data:`PROGRAMS` this writes

- ``{name}.safetensors``: tracr's parameters as ``"{haiku module}/{name}"`` (float32) and the
  unembedding matrix ``"unembed"`` (:func:`neurosurgeon.circuits.tracr.tracr_params`);
- ``{name}.json``: the compile settings, tracr's model config, the residual labels (which variable
  owns each residual feature), the input and output encodings, and ``"selectors"``: for every
  attention head the program uses, ``{"A{layer}.{head}": {"operation", "variable", "query", "key",
  "predicate"}}``, the RASP operation it implements (``Aggregate`` or ``SelectorWidth``), the
  variable it computes, and its selector ``Select(key, query, predicate)`` (the predicate's name in
  ``rasp.Comparison``: ``EQ``, ``LT``, ..., ``TRUE``), read from tracr's graph of the program;
- ``{name}_outputs.safetensors``: every input of every length up to ``max_seq_len`` (BOS first,
  encoded) as ``"inputs/{T}"`` ``(N, T)``, tracr's unembedded output on it (before the argmax)
  as ``"outputs/{T}"`` ``(N, T, outputs)``, and the RASP program's own value at each non-BOS
  position, encoded, as ``"program/{T}"`` ``(N, T - 1)`` (categorical: the output index; numerical:
  the value).

Needs the ``tracr`` extra (``pip install -e .[tracr]``). Deterministic: RASP labels carry a
global counter, so it restarts for every program (the files do not depend on which programs are
compiled, or in which order), and jax runs on the CPU.

Usage: ``python scripts/compile_tracr.py [--out DIR] [--programs reverse frac_prevs]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from importlib.metadata import version  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tracr.compiler import (  # noqa: E402
    assemble, basis_inference, craft_graph_to_model, craft_model_to_transformer, expr_to_craft_graph, lib, nodes,
    rasp_to_graph,
)
from tracr.craft import bases, transformers  # noqa: E402
from tracr.rasp import rasp  # noqa: E402

from neurosurgeon.circuits.tracr import save_tracr, tracr_params  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "circuits" / "data" / "tracr"
BOS = "BOS"

#: name -> (the RASP program's source in tracr's lib, vocabulary, max_seq_len, causal).
#: reverse reads later positions, so it is compiled non-causal (a TracrModel); frac_prevs works
#: under both, and is compiled causal (a GPT-2).
PROGRAMS = {
    "reverse": ("lib.make_reverse(rasp.tokens)", ("a", "b", "c"), 5, False),
    "frac_prevs": ('lib.make_frac_prevs(rasp.tokens == "x")', ("a", "b", "x"), 5, True),
}


def build_program(source: str):
    """The RASP program of ``source``, with the label counter restarted so its labels are always the same."""
    # RASPExpr numbers every expression from one class-wide counter (its labels are "{name}_{id}").
    rasp.RASPExpr._ids = itertools.count(1)
    return eval(source, {"lib": lib, "rasp": rasp})  # the sources are this file's own constants


def compile_with_graph(program, vocab, max_seq_len: int, causal: bool):
    """``compiling.compile_rasp_to_model(program, ...)`` step by step (tracr's own steps, its default
    ``mlp_exactness`` and ``compiler_pad``), keeping what it discards: the program's graph, whose
    nodes hold each RASP expression and the craft block compiled from it, and the craft model,
    whose blocks the assembled layers are made of. Returns ``(assembled, graph, craft_model)``."""
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(vocab), max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(graph, bos_dir=bases.BasisDirection(rasp.tokens.label, BOS),
                                                           mlp_exactness=100)
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    assembled = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model, graph=graph, sink=sink, max_seq_len=max_seq_len, causal=causal, compiler_bos=BOS,
        compiler_pad="compiler_pad")
    return assembled, graph, craft_model


def head_selectors(graph, craft_model) -> dict[str, dict[str, str]]:
    """``{"A{layer}.{head}": {"operation", "variable", "query", "key", "predicate"}}``: the RASP
    expression each attention head of the assembled model implements, and its selector.

    A graph node's craft block is an ``AttentionHead`` (Aggregate) or an attention head followed
    by an MLP (SelectorWidth); the craft model's attention layers hold those same head objects, in
    the assembled model's head order, and tracr places its blocks in layers as ``assemble`` does.
    """
    owner = {}
    for node in graph.nodes.values():
        block = node.get(nodes.MODEL_BLOCK)
        parts = block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]
        for part in parts:
            if isinstance(part, (transformers.AttentionHead, transformers.MultiAttentionHead)):
                for head in part.as_multi().heads():
                    owner[id(head)] = node[nodes.EXPR]
    # tracr's own placement of the craft blocks in "transformer/layer_{l}/{attn,mlp}" (private).
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    selectors = {}
    for block, module in zip(craft_model.blocks, module_names):
        if not module.endswith("/attn"):
            continue
        layer = int(module.split("/")[1].removeprefix("layer_"))
        for h, head in enumerate(block.as_multi().heads()):
            expr = owner[id(head)]
            select = expr.selector
            if not isinstance(select, rasp.Select):
                raise NotImplementedError(f"{expr.label}: a selector of type {type(select).__name__}")
            selectors[f"A{layer}.{h}"] = dict(operation=type(expr).__name__, variable=expr.label,
                                              query=select.queries.label, key=select.keys.label,
                                              predicate=select.predicate.name)
    return selectors


def unembedded(assembled):
    """A jitted ``tokens (B, T) -> tracr's output before the argmax (B, T, outputs)``."""

    @hk.without_apply_rng
    @hk.transform
    def forward(tokens):
        compiled = assembled.get_compiled_model()
        out = compiled(tokens, use_dropout=False)
        return compiled.unembed(out.transformer_output.output, use_unembed_argmax=False)

    fn = jax.jit(lambda tokens: forward.apply(assembled.params, tokens))

    def run(tokens: np.ndarray) -> np.ndarray:
        out = np.array(fn(jnp.asarray(tokens)), dtype=np.float32)  # a writable copy for torch
        return out.reshape(*tokens.shape, -1)

    return run


def compile_program(name: str, out: pathlib.Path) -> None:
    source, vocab, max_seq_len, causal = PROGRAMS[name]
    program = build_program(source)
    assembled, graph, craft_model = compile_with_graph(program, vocab, max_seq_len, causal)
    c = assembled.model_config
    categorical = rasp.is_categorical(program)
    output_encoding = assembled.output_encoder.encoding_map if categorical else None
    info = dict(
        program=name, rasp=source, vocab=list(vocab), max_seq_len=max_seq_len, causal=causal, compiler_bos=BOS,
        num_heads=c.num_heads, num_layers=c.num_layers, key_size=c.key_size, mlp_hidden_size=c.mlp_hidden_size,
        layer_norm=c.layer_norm, activation="relu", categorical_output=categorical,
        residual_labels=list(assembled.residual_labels), input_encoding=assembled.input_encoder.encoding_map,
        output_encoding=output_encoding, output_label=program.label, selectors=head_selectors(graph, craft_model),
        compiler=f"tracr-pypi {version('tracr-pypi')}, jax {jax.__version__}",
    )
    save_tracr(tracr_params(assembled), info, out / name)

    run = unembedded(assembled)
    cases = {}
    for length in range(1, max_seq_len + 1):
        words = [[BOS, *w] for w in itertools.product(vocab, repeat=length)]
        tokens = np.array([assembled.input_encoder.encode(w) for w in words], dtype=np.int64)
        values = [program(list(w[1:])) for w in words]
        if categorical:
            target = np.array([[output_encoding[v] for v in row] for row in values], dtype=np.int64)
        else:
            target = np.array(values, dtype=np.float32)
        cases[f"inputs/{length + 1}"] = torch.from_numpy(tokens)
        cases[f"outputs/{length + 1}"] = torch.from_numpy(run(tokens))
        cases[f"program/{length + 1}"] = torch.from_numpy(target)
    save_file(cases, str(out / f"{name}_outputs.safetensors"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--programs", nargs="+", choices=sorted(PROGRAMS), default=list(PROGRAMS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.programs:
        compile_program(name, args.out)
        print(f"wrote {args.out / name}.{{safetensors,json}} and {name}_outputs.safetensors")


if __name__ == "__main__":
    main()
