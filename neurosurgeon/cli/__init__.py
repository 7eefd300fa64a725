"""The ``neurosurgeon`` command: discover, test and draw a subnetwork in one go.

``neurosurgeon demo`` (also a bare ``neurosurgeon``) trains a small GPT-2 on an embedded
two-sub-task problem, finds a subnetwork for one sub-task with differentiable masks, tests
it against K random ablation baselines (vmapped) and writes a PNG, ``masks.safetensors`` and
``results.json``. ``neurosurgeon analyze --model DIR --data FILE`` does the same on a local
Hugging Face model and a CSV/JSONL of labelled examples. ``neurosurgeon compare A B`` reports
how two saved subnetworks overlap against chance. ``neurosurgeon circuit --model DIR --data pairs.csv
--edges K`` finds the edges of a causal LM that do a task of paired prompts, beside random circuits of
the same size. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..functional.strategies import STRATEGIES
from ._analysis import METHOD_DEFAULTS, MaskConfig
from ._run import CLIError

__all__ = ["main", "build_parser", "CLIError"]


def _initials(name: str) -> str:
    """A strategy's short name: the first letter of each word (``continuous_sparsification`` -> ``cs``)."""
    return "".join(word[0] for word in name.split("_"))


#: --method's values: every strategy whose masks train (its table row has parameters), by its
#: name or its initials (cs, hc), in table order.
_TRAINED = [name for name, row in STRATEGIES.items() if row.has_params]
_METHODS = {alias: name for name in _TRAINED for alias in (name, _initials(name))}
_CHOICES = " or ".join(f"{name} ({_initials(name)})" for name in _TRAINED)
_DEFAULT_METHOD = MaskConfig.method


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def _method(text: str) -> str:
    try:
        return _METHODS[text.lower().replace("-", "_")]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown method {text!r}; choose {_CHOICES}") from None


def _common(p: argparse.ArgumentParser, *, epochs: int, steps: int, targets_help: str) -> None:
    g = p.add_argument_group("subnetwork discovery")
    g.add_argument("--method", type=_method, default=_DEFAULT_METHOD,
                   help=f"mask strategy: {_CHOICES} (default {_DEFAULT_METHOD})")
    g.add_argument("--targets", nargs="+", metavar="PATTERN", help=targets_help)
    g.add_argument("--epochs", type=_positive_int, default=epochs, help=f"mask-training epochs (default {epochs})")
    g.add_argument("--steps-per-epoch", type=_positive_int, default=steps,
                   help=f"optimizer steps per epoch (default {steps})")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="mask-training batch size (default 128)")
    g.add_argument("--lr", type=_positive_float, default=0.05, help="Adam learning rate of the mask parameters (default 0.05)")
    g.add_argument("--l0-lambda", type=_nonneg_float, default=None,
                   help="weight of the L0 penalty, applied to L0 / max L0 (the expected density); "
                        "default 1.0 for cs, 4.0 for hc")
    g.add_argument("--final-temp", type=_positive_float, default=200.0,
                   help="continuous sparsification: temperature reached after the last epoch (default 200)")
    g.add_argument("--mask-init", type=float, default=None,
                   help="initial mask value: theta for cs (default 1.0), kept fraction for hc (default 0.9)")
    g = p.add_argument_group("testing and output")
    g.add_argument("--seeds", type=_positive_int, default=50,
                   help="number K of random baselines per sampling mode (default 50)")
    g.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="evaluate at most this many baselines at once (bounds memory; default all K)")
    g.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    g.add_argument("--out", default="neurosurgeon-out", help="output directory (default ./neurosurgeon-out)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines; still prints the table")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="neurosurgeon",
        description="Find, test and draw subnetworks of trained networks with differentiable binary masks. "
                    "Without a subcommand, runs 'demo'.",
    )
    parser.add_argument("--version", action="version", version=f"neurosurgeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,analyze,compare,circuit}")
    demo = sub.add_parser(
        "demo", help="train a small GPT-2 on a two-sub-task problem, then find and test a subnetwork (< 1 min on CPU)",
        description="Train a 2-layer GPT-2 on an embedded two-sub-task problem ('add' and 'copy'), discover a "
                    "subnetwork for 'add', test it on both sub-tasks against K random baselines, and write "
                    "subnetwork.png, masks.safetensors and results.json into --out. Its circuit part finds the edges "
                    "of a shipped induction model that copy in context, against random circuits of the same size, "
                    "and writes them into --out/circuit.")
    demo.add_argument("--train-steps", type=_positive_int, default=300,
                      help="training steps of the embedded model (default 300)")
    demo.add_argument("--threads", type=_positive_int, default=min(2, os.cpu_count() or 1),
                      help="torch intra-op threads (default: 2, or 1 on a one-core machine; more only add "
                           "synchronisation on this tiny model, and 1 is faster on a busy machine)")
    demo.add_argument("--circuit-steps", type=_positive_int, default=150,
                      help="training steps of the circuit part's edge masks (default 150)")
    demo.add_argument("--circuit-edges", type=_positive_int, default=12,
                      help="edges the circuit part keeps, of the induction model's 110 (default 12)")
    demo.add_argument("--circuit-null", type=_positive_int, default=100,
                      help="random circuits per size and null in the circuit part (default 100)")
    demo.add_argument("--no-circuit", action="store_true",
                      help="skip the circuit part (the induction model's edges, written to OUT/circuit)")
    _common(demo, epochs=10, steps=30,
            targets_help="layers to mask: module names or globs (default: transformer.h.*.attn.* transformer.h.*.mlp.*)")

    an = sub.add_parser(
        "analyze", help="the same analysis on your Hugging Face model directory and a CSV/JSONL of examples",
        description="Discover and test a subnetwork of a local Hugging Face model (sequence classifier or causal "
                    "LM) for one sub-task of a labelled CSV/JSONL file (columns text,label[,subtask]; see docs/cli.md).")
    an.add_argument("--model", required=True, metavar="DIR", help="model directory (save_pretrained output, with tokenizer)")
    an.add_argument("--data", required=True, metavar="FILE", help=".csv or .jsonl with text, label and optional subtask")
    an.add_argument("--subtask", default=None, help="sub-task to find the subnetwork for (default: the first in the file)")
    an.add_argument("--task", choices=("auto", "classification", "causal-lm"), default="auto",
                    help="how to read predictions (default: from the model's architecture)")
    an.add_argument("--test-fraction", type=float, default=0.25,
                    help="share of each sub-task's examples held out for testing (default 0.25)")
    an.add_argument("--max-length", type=_positive_int, default=128, help="truncate inputs to this many tokens (default 128)")
    _common(an, epochs=10, steps=20,
            targets_help="layers to mask: module names or globs (default: every Linear/Conv1D except the output head)")

    cmp = sub.add_parser(
        "compare", help="the overlap of two saved subnetworks against chance, as a figure and comparison.json",
        description="Compare two mask files (save_masks output, or demo/analyze output directories): per tensor, "
                    "layer and attention head, the kept counts, intersection, IoU and the overlap expected of two "
                    "random subnetworks of the same sizes with its hypergeometric p-value. Writes comparison.png "
                    "and comparison.json into --out.")
    cmp.add_argument("a", metavar="A", help="first mask file (.safetensors) or output directory holding masks.safetensors")
    cmp.add_argument("b", metavar="B", help="second mask file or output directory")
    cmp.add_argument("--model", metavar="DIR", default=None,
                     help="the model directory the masks belong to (save_pretrained output): counts per weight and "
                          "per attention head; needed for magnitude-pruning masks (default: count mask units)")
    cmp.add_argument("--granularity", choices=("tensor", "layer", "block"), default="tensor",
                     help="bars per tensor, per layer, or per attention head and MLP (block; needs --model)")
    cmp.add_argument("--label-a", default=None, help="legend label of A (default: its directory name)")
    cmp.add_argument("--label-b", default=None, help="legend label of B (default: its directory name)")
    cmp.add_argument("--out", default="neurosurgeon-out", help="output directory (default ./neurosurgeon-out)")
    cmp.add_argument("-q", "--quiet", action="store_true", help="no log lines; still prints the table")

    from ..circuits import METRICS, NULLS

    cir = sub.add_parser(
        "circuit", help="find a circuit (edges between heads and MLPs) of your causal LM for paired prompts, with "
                        "its faithfulness curve, random-circuit nulls and p-values",
        description="Train edge masks of a local Hugging Face causal LM on a CSV of paired prompts (columns "
                    "clean,corrupted,answer,wrong; see docs/cli.md), keep exactly --edges edges, and judge them: "
                    "faithfulness at a ladder of sizes, random circuits of every size as the null, p-values and "
                    "warnings. Writes circuit.json, circuit.png, faithfulness.png and results.json into --out.")
    cir.add_argument("--model", required=True, metavar="DIR", help="model directory (save_pretrained output, with tokenizer)")
    cir.add_argument("--data", required=True, metavar="FILE",
                     help=".csv with the columns clean,corrupted,answer,wrong (single-token answers; the two prompts "
                          "of a row of equal token length)")
    cir.add_argument("--edges", required=True, type=_positive_int, metavar="K", help="edges the circuit keeps")
    cir.add_argument("--metric", choices=list(METRICS), default="logit_diff", help="task metric (default logit_diff)")
    cir.add_argument("--ablation", choices=("resample", "mean", "zero"), default="resample",
                     help="what a removed edge carries: the corrupted prompt's value (resample, default), the mean "
                          "over the corrupted prompts, or zero")
    g = cir.add_argument_group("training")
    g.add_argument("--steps", type=_positive_int, default=200, help="mask-training steps (default 200)")
    g.add_argument("--strategy", choices=_TRAINED, default="hard_concrete", help="mask strategy (default hard_concrete)")
    g.add_argument("--target-sparsity", type=float, default=None,
                   help="fraction of edges training removes, in (0, 1) (default 1 - edges / all edges)")
    g.add_argument("--lr", type=_positive_float, default=0.1, help="Adam learning rate of theta (default 0.1)")
    g.add_argument("--lambda-lr", type=_positive_float, default=None,
                   help="learning rate of the sparsity Lagrangian's multipliers (default: train_circuit's)")
    g.add_argument("--batch-size", type=_positive_int, default=32, help="pairs per batch (default 32)")
    g.add_argument("--restarts", type=int, default=0, metavar="R",
                   help="train R more circuits from other seeds and bootstrap resamples of the pairs and report "
                        "their Jaccard overlap (default 0)")
    g = cir.add_argument_group("evidence and output")
    g.add_argument("--null-size", type=_positive_int, default=100, metavar="K",
                   help="random circuits per size and null (default 100)")
    g.add_argument("--nulls", nargs="+", choices=NULLS, default=list(NULLS), help="which nulls (default both)")
    g.add_argument("--sizes", nargs="+", type=_positive_int, default=None, metavar="K",
                   help="circuit sizes of the faithfulness curve (default: MIB's fractions of the edges, and --edges)")
    g.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="circuits evaluated at once (bounds memory; default all K)")
    g.add_argument("--seed", type=int, default=0, help="seed of the PRNG key of training and nulls (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="torch intra-op threads while the command runs (default: torch's; 1 is fastest for a tiny "
                        "model on a busy machine)")
    g.add_argument("--out", default="neurosurgeon-out", help="output directory (default ./neurosurgeon-out)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines; still prints the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "demo")
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in METHOD_DEFAULTS.get(getattr(args, "method", None), {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        if args.command == "circuit":
            from .circuit import run_circuit

            run_circuit(args)
        elif args.command == "compare":
            from .compare import run_compare

            run_compare(args)
        elif args.command == "analyze":
            from .analyze import run_analyze

            run_analyze(args)
        else:
            from .demo import run_demo

            run_demo(args)
    except CLIError as e:
        print(f"neurosurgeon {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
