"""``neurosurgeon circuit``: find a circuit of a local causal LM for a task of paired prompts, and the
evidence every number of it needs.

Data: a CSV file with a header row naming the columns ``clean,corrupted,answer,wrong``
(:data:`PAIR_COLUMNS`; other columns are ignored). Row i pairs a clean prompt with a corrupted
one; ``answer`` is the token the model should predict after the clean prompt, ``wrong`` the one it
should not (what the corrupted prompt points to). Both answers must be single tokens, and the two
prompts of a row must tokenize to the same length, because a resample ablation patches position
by position. Rows of different lengths are fine: they are batched by length, so nothing is padded.

The run: train edge masks towards ``1 - edges / E`` of the edges removed
(:func:`~neurosurgeon.circuits.train_circuit`), keep exactly ``--edges`` edges of largest theta, and
judge that ranking with :func:`~neurosurgeon.circuits.evidence.circuit_evidence`: faithfulness at a
ladder of sizes with its area, random circuits of every size as the null (p-values), the chance
check and, with ``--restarts``, the stability of circuits from other seeds and data resamples.
Every file is written to a temporary directory beside ``--out`` and moved in only when all are
complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .. import __version__
from ..circuits import circuit_graph, to_circuit_json, train_circuit
from ..circuits.evidence import (
    CircuitEvidenceWarning, CircuitScorer, chance_level, circuit_evidence, size_ladder, stability,
)
from ..functional import random as nr
from ..functional.edges import top_k_circuit
from ._run import CLIError, Console, resolve_device
from .report import format_warnings

__all__ = ["PAIR_COLUMNS", "OUTPUT_FILES", "run_circuit", "read_pairs", "encode_pairs", "pair_batches",
           "draw_circuit", "draw_faithfulness"]

#: The columns ``--data`` must name in its header.
PAIR_COLUMNS = ("clean", "corrupted", "answer", "wrong")
#: What the command writes into ``--out``.
OUTPUT_FILES = ("circuit.json", "circuit.png", "faithfulness.png", "results.json")


# -- data ------------------------------------------------------------------------------------------

def read_pairs(path: Path) -> list[dict]:
    """Rows ``{"clean", "corrupted", "answer", "wrong", "line"}`` of a pairs CSV (CLIError naming the
    file and line on malformed data)."""
    name = repr(str(path))
    if not path.exists():
        raise CLIError(f"--data {name}: no such file")
    if not path.is_file():
        raise CLIError(f"--data {name}: not a file")
    if path.suffix.lower() != ".csv":
        raise CLIError(f"--data {name}: expected a .csv file with the header {','.join(PAIR_COLUMNS)}")
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: CSVs saved by Excel
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in PAIR_COLUMNS if c not in fields]
        if missing:
            raise CLIError(f"--data {name}: the header must name the columns {','.join(PAIR_COLUMNS)}; missing "
                           f"{', '.join(missing)} (found: {', '.join(fields) or 'nothing'})")
        for r in reader:
            line = reader.line_num
            if None in r or any(r.get(c) is None for c in fields):
                raise CLIError(f"--data {name} line {line}: expected {len(fields)} fields, as in the header")
            for c in PAIR_COLUMNS:
                if not r[c].strip() and (c in ("clean", "corrupted") or r[c] == ""):
                    raise CLIError(f"--data {name} line {line}: empty {c}")
            rows.append({**{c: r[c] for c in PAIR_COLUMNS}, "line": line})
    if not rows:
        raise CLIError(f"--data {name}: no pairs (a header and no rows)")
    return rows


def _max_positions(config) -> int | None:
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def encode_pairs(rows: list[dict], tokenizer, path: Path, *, max_positions: int | None = None) -> list[dict]:
    """Token ids of every row: ``clean`` and ``corrupted`` (lists of equal length) and the single
    tokens ``answer`` and ``wrong``; CLIError naming the file and line for a pair of unequal lengths,
    a prompt longer than the model takes, or an answer that is not one token."""
    name = repr(str(path))
    out = []
    for r in rows:
        where = f"--data {name} line {r['line']}"
        clean, corrupted = (tokenizer(r[c])["input_ids"] for c in ("clean", "corrupted"))
        if not clean or not corrupted:
            raise CLIError(f"{where}: a prompt tokenizes to nothing")
        if len(clean) != len(corrupted):
            raise CLIError(f"{where}: the clean prompt is {len(clean)} tokens and the corrupted one {len(corrupted)}; "
                           "the two prompts of a pair must have the same number of tokens (a resample ablation "
                           "patches position by position)")
        if max_positions is not None and len(clean) > max_positions:
            raise CLIError(f"{where}: the prompts are {len(clean)} tokens, more than the model's {max_positions} "
                           "positions")
        answers = {}
        for c in ("answer", "wrong"):
            ids = tokenizer(r[c], add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise CLIError(f"{where}: {c} {r[c]!r} is {len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}; "
                               "answers must be single tokens (with a GPT-2-style tokenizer, write the leading "
                               "space: \" Paris\")")
            answers[c] = ids[0]
        if answers["answer"] == answers["wrong"]:
            raise CLIError(f"{where}: answer {r['answer']!r} and wrong {r['wrong']!r} are the same token")
        out.append({"clean": clean, "corrupted": corrupted, **answers, "line": r["line"]})
    return out


def pair_batches(pairs: list[dict], batch_size: int, device=None) -> list[dict]:
    """Batches for :func:`~neurosurgeon.circuits.train_circuit` and the scorer: pairs grouped by
    length (in order of first appearance), at most ``batch_size`` each; ``input_ids``,
    ``corrupted`` ``(B, T)`` and ``answers``, ``wrong`` ``(B,)``."""
    groups: dict[int, list[dict]] = {}
    for p in pairs:
        groups.setdefault(len(p["clean"]), []).append(p)
    batches = []
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            part = group[i:i + batch_size]
            batches.append({
                "input_ids": torch.tensor([p["clean"] for p in part], device=device),
                "corrupted": torch.tensor([p["corrupted"] for p in part], device=device),
                "answers": torch.tensor([p["answer"] for p in part], device=device),
                "wrong": torch.tensor([p["wrong"] for p in part], device=device),
            })
    return batches


def _mean_reference(batches: list[dict]) -> torch.Tensor:
    # A causal model's first t outputs do not depend on later tokens: every corrupted prompt cut to
    # the shortest length is a prompt of one length, so one reference holds every pair equally.
    t = min(b["corrupted"].shape[1] for b in batches)
    return torch.cat([b["corrupted"][:, :t] for b in batches])


# -- figures ---------------------------------------------------------------------------------------

_READER_COLORS = {"Q": "tab:blue", "K": "tab:green", "V": "tab:orange", "MLP": "tab:purple", "logits": "black"}


#: How far an edge bends above the straight line, per unit of the columns it spans, and the extra
#: bend of a key or value edge: collinear edges of different spans, and a head's query, key and
#: value edges from one writer, stay apart.
_BEND = {"Q": 0.0, "K": 0.12, "V": 0.24, "MLP": 0.0, "logits": 0.0}


def _arc(start, end, extra: float, points: int = 24) -> list[tuple[float, float]]:
    """A quadratic Bezier curve from ``start`` to ``end`` bulging upwards with the span."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.12 * (x1 - x0) + extra
    ts = [i / (points - 1) for i in range(points)]
    return [((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1, (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1)
            for t in ts]


def _node_positions(graph) -> dict[str, tuple[float, float]]:
    """Columns: the embeddings, then per layer its heads and its MLP, then the logits."""
    pos = {}
    e = len(graph.embeddings)
    for i, name in enumerate(graph.embeddings):
        pos[name] = (0.0, i - (e - 1) / 2)
    for layer in range(graph.layers):
        for h in range(graph.heads):
            pos[f"A{layer}.{h}"] = (1.0 + 2 * layer, h - (graph.heads - 1) / 2)
        pos[f"MLP {layer}"] = (2.0 + 2 * layer, 0.0)
    pos["Resid End"] = (1.0 + 2 * graph.layers, 0.0)
    return pos


def _reader_targets(graph, reader: str) -> tuple[list[str], str]:
    """The nodes a reader's edge is drawn to, and the reader's kind."""
    if reader == "Resid End":
        return ["Resid End"], "logits"
    if reader.startswith("MLP "):
        return [reader], "MLP"
    head, kind = reader.rsplit(".", 1)
    layer, index = head[1:].split(".")
    if kind == "Q":
        return [head], kind
    per = graph.heads // graph.kv_heads  # a key/value group feeds every query head of the group
    return [f"A{layer}.{h}" for h in range(int(index) * per, (int(index) + 1) * per)], kind


def draw_circuit(graph, mask: torch.Tensor, scores: torch.Tensor, path, *, title: str) -> None:
    """Write a PNG of the circuit: writers by layer (heads as circles, MLPs as squares), each kept
    edge a line coloured by what it feeds (query, key, value, MLP, logits), wider and darker the
    larger its score among the kept edges."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    pos = _node_positions(graph)
    kept = torch.nonzero(mask).flatten().tolist()
    values = scores.detach().float().cpu()[kept] if kept else torch.zeros(0)
    lo, hi = (float(values.min()), float(values.max())) if kept else (0.0, 1.0)
    strength = ((values - lo) / (hi - lo)).tolist() if hi > lo else [1.0] * len(kept)
    readers = graph.reader_of_edge().tolist()
    writers = graph.writer_of_edge().tolist()
    segments, colors, widths, used = [], [], [], set()
    for i, s in zip(kept, strength):
        source = graph.writers[writers[i]]
        targets, kind = _reader_targets(graph, graph.readers[readers[i]])
        x0, y0 = pos[source]
        for t in targets:
            x1, y1 = pos[t]
            segments.append(_arc((x0, y0), (x1, y1), _BEND[kind]))
            colors.append((*matplotlib.colors.to_rgb(_READER_COLORS[kind]), 0.25 + 0.75 * s))
            widths.append(0.4 + 2.6 * s)
            used.update((source, t))
    columns = 2 * graph.layers + 2
    fig, ax = plt.subplots(figsize=(min(30.0, max(6.0, 0.75 * columns)), max(3.5, 0.45 * graph.heads + 2.2)),
                           constrained_layout=True)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=widths, zorder=1))
    label = len(pos) <= 80
    for name, (x, y) in pos.items():
        marker = "s" if name.startswith("MLP") else ("o" if name.startswith("A") else "D")
        on = name in used
        ax.scatter([x], [y], s=160, marker=marker, zorder=2, color="tab:red" if on else "0.85",
                   edgecolors="black" if on else "0.7", linewidths=0.8)
        if label:
            ax.annotate(name, (x, y), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=6,
                        color="black" if on else "0.6")
    ticks = [0.0] + [v for layer in range(graph.layers) for v in (1.0 + 2 * layer, 2.0 + 2 * layer)] + [columns - 1.0]
    names = ["embed"] + [v for layer in range(graph.layers) for v in (f"L{layer} heads", f"L{layer} MLP")] + ["logits"]
    ax.set_xticks(ticks, names, fontsize=7, rotation=45 if graph.layers > 6 else 0)
    ax.set_yticks([])
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-(graph.heads + 1) / 2, (graph.heads + 1) / 2 + 0.12 * columns / 2 + 0.3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend([Line2D([0], [0], color=c, lw=2) for c in _READER_COLORS.values()],
              [f"into {k}" for k in _READER_COLORS], fontsize=7, loc="lower center", ncol=5, frameon=False,
              bbox_to_anchor=(0.5, 1.0))
    ax.set_title(title, fontsize=10, pad=24)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_faithfulness(evidence: dict, edges: int, num_edges: int, path) -> None:
    """Write a PNG of the faithfulness curve against the fraction of edges kept, with each null's
    median and 5-95% band (the task score instead, where faithfulness is undefined)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    curve = evidence["curve"]
    faith = all(math.isfinite(v) for v in curve["faithfulness"])
    x = curve["fractions"]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for (name, null), color in zip(evidence["null"].items(), ("tab:gray", "tab:green")):
        points = [(f, e["faithfulness"] if faith else e) for f, e in zip(x, null["sizes"]) if e is not None]
        if not points:
            continue
        fs = [f for f, _ in points]
        med, q05, q95 = ([p[k] for _, p in points] for k in ("null_median", "null_q05", "null_q95"))
        ax.fill_between(fs, q05, q95, color=color, alpha=0.25, lw=0, label=f"{name} null, 5-95% (K={null['num']})")
        ax.plot(fs, med, color=color, lw=1.2, ls="--", label=f"{name} null, median")
    y = curve["faithfulness"] if faith else curve["score"]
    ax.plot(x, y, color="black", marker="o", ms=4, lw=1.5, label="circuit (top-k of theta)")
    ax.axvline(edges / num_edges, color="tab:red", lw=1, ls=":", label=f"--edges {edges}")
    if faith:
        for level in (0.0, 1.0):
            ax.axhline(level, color="0.6", lw=0.6)
    else:
        ax.axhline(curve["full"], color="0.3", lw=0.8, ls="-.", label="full model")
        ax.axhline(curve["empty"], color="0.6", lw=0.8, ls="-.", label="empty circuit")
    ax.set_xscale("log")
    ax.set_xlabel(f"fraction of the {num_edges:,} edges kept")
    ax.set_ylabel("faithfulness" if faith else f"{evidence['metric']} (faithfulness undefined)")
    area = curve["area"]
    ax.set_title(f"{evidence['metric']}: faithfulness area {area:.3f}" if math.isfinite(area) else
                 f"{evidence['metric']}: the full and the empty circuit score the same", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- output ----------------------------------------------------------------------------------------

def _plain(obj):
    """JSON-ready: NaN and infinities become null (json.dumps would write invalid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _write_all(out: Path, writers: dict) -> None:
    """Write every file into a temporary directory beside ``out``, then move them in together."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise CLIError(f"--out {str(out)!r}: cannot write beside it ({e.strerror})") from None
    try:
        for name, write in writers.items():
            write(tmp / name)
        out.mkdir(exist_ok=True)
        for name in writers:
            os.replace(tmp / name, out / name)
    except OSError as e:
        raise CLIError(f"--out {str(out)!r}: cannot write the results ({e.strerror}); nothing was moved in") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _summary(results: dict) -> str:
    c, ev = results["circuit"], results["evidence"]
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"  # noqa: E731
    chance = ev["chance"]
    lines = [
        f"Circuit: {c['edges']:,} of {results['graph']['edges']:,} edges ({100 * c['edges'] / results['graph']['edges']:.2f}%), "
        f"metric {ev['metric']} ({'higher' if ev['higher_is_better'] else 'lower'} is better), "
        f"ablation {results['config']['ablation']}, {results['data']['pairs']} pairs",
        "",
        f"  full model        {f(ev['full'])}" + (f"   (chance {f(chance['chance'])}, z = {f(chance['z'])})"
                                                  if chance["chance"] is not None else ""),
        f"  empty circuit     {f(ev['empty'])}",
        f"  circuit           {f(c['score'])}   faithfulness {f(c['faithfulness'])}",
    ]
    for name, entry in c["null"].items():
        if entry is None:
            lines.append(f"  {name} null      none: every circuit of all edges is the full model")
            continue
        lines.append(f"  {name + ' null':<18}median {f(entry['null_median'])}, 5-95% [{f(entry['null_q05'])}, "
                     f"{f(entry['null_q95'])}], p = {entry['p_value']:.3g} (K = {entry['null_size']})")
    areas = ", ".join(f"{n} {f(v['median_area'])}" for n, v in ev["null"].items())
    lines.append(f"  faithfulness area {f(ev['curve']['area'])} over {len(ev['curve']['sizes'])} sizes"
                 + (f" (null medians: {areas})" if areas else ""))
    if "stability" in results:
        s = results["stability"]
        lines.append(f"  stability         mean Jaccard {s['mean_iou']:.3f} over {s['runs']} runs "
                     f"(random circuits: {s['mean_expected_iou']:.3f})")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------------

def _check_options(args, num_edges: int) -> tuple[float | None, list[int]]:
    if args.edges > num_edges:
        raise CLIError(f"--edges {args.edges}: the model's graph has {num_edges:,} edges; choose 1 to {num_edges:,}")
    if args.restarts < 0:
        raise CLIError(f"--restarts {args.restarts}: give 0 or more extra training runs")
    if args.null_size < 2:
        raise CLIError(f"--null-size {args.null_size}: a null band needs at least 2 random circuits")
    target = args.target_sparsity
    if target is None:
        target = 1 - args.edges / num_edges
        target = target if target > 0 else None  # every edge kept: nothing to remove
    elif not 0 < target < 1:
        raise CLIError(f"--target-sparsity {target}: the fraction of edges removed must be in (0, 1)")
    if args.sizes:
        bad = [k for k in args.sizes if not 1 <= k <= num_edges]
        if bad:
            raise CLIError(f"--sizes {bad}: circuit sizes must be in 1 to {num_edges:,} (the graph's edges)")
        sizes = sorted({*args.sizes, args.edges})
    else:
        sizes = size_ladder(num_edges, include=[args.edges])
    return target, sizes


def _train(model, graph, batches, key, args, reference, target, console):
    given = {} if args.lambda_lr is None else {"lambda_lr": args.lambda_lr}  # else the library's default
    return train_circuit(model, graph, batches, key=key, steps=args.steps, metric=args.metric, ablation=args.ablation,
                         reference=reference, strategy=args.strategy, target_sparsity=target, lr=args.lr,
                         progress=not console.quiet, **given)


def _resampled(pairs: list[dict], key: torch.Tensor) -> list[dict]:
    """A bootstrap resample of the pairs (drawn with replacement), keyed."""
    n = len(pairs)
    index = (nr.uniform(key, (n,), dtype=torch.float64) * n).long().clamp(max=n - 1).tolist()
    return [pairs[i] for i in index]


def run_circuit(args) -> dict:
    """Train, discretise and judge a circuit; print the summary and write :data:`OUTPUT_FILES`."""
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> dict:
    console = Console(args.quiet)
    model_dir, data_path, out = Path(args.model), Path(args.data), Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file; give a directory")
    rows = read_pairs(data_path)
    device = resolve_device(args.device)
    from transformers.utils import logging as hf_logging

    from .analyze import load_model

    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        model, tokenizer, _ = load_model(model_dir, "causal-lm")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval().requires_grad_(False)
    try:
        graph = circuit_graph(model)
    except ValueError as e:
        raise CLIError(f"--model {str(model_dir)!r}: {e}") from None
    if not graph.edges_allowed:
        raise CLIError(f"--model {str(model_dir)!r}: a post-norm model takes node masks only; the circuit command "
                       "finds edges")
    target, sizes = _check_options(args, graph.num_edges)
    pairs = encode_pairs(rows, tokenizer, data_path, max_positions=_max_positions(model.config))
    batches = pair_batches(pairs, args.batch_size, device)
    reference = _mean_reference(batches) if args.ablation == "mean" else None
    console.log(f"neurosurgeon {__version__} circuit: {type(model).__name__} from {str(model_dir)!r} ({device}); "
                f"{graph.num_edges:,} edges; {len(pairs)} pairs in {len(batches)} batch(es)")
    data = {"pairs": len(pairs), "batches": len(batches), "lengths": sorted({len(p["clean"]) for p in pairs})}

    def again(key):  # another circuit, from a bootstrap resample of the pairs
        return pair_batches(_resampled(pairs, key), args.batch_size, device)

    return judge_circuit(model, graph, batches, args=args, target=target, sizes=sizes, reference=reference,
                         console=console, out=out, data=data, resample=again, device=device)


def judge_circuit(model, graph, batches, *, args, target, sizes, reference, console, out: Path, data: dict,
                  device, resample=None) -> dict:
    """Train edge masks, keep exactly ``args.edges`` edges, judge them against their nulls, print the
    summary and write :data:`OUTPUT_FILES` into ``out`` (all or nothing).

    ``args`` carries the command's options (metric, ablation, edges, steps, lr, lambda_lr, strategy,
    null_size, nulls, restarts, seed, chunk_size, ...); ``resample(key)`` gives the batches of a
    restart (needed when ``args.restarts`` > 0).
    """
    key_train, key_null, key_restarts = nr.split(nr.key(args.seed), 3)
    console.log(f"\n[1/3] Training edge masks ({args.strategy}, {args.steps} steps, target sparsity "
                f"{'none' if target is None else f'{target:.4f}'})")
    trained = _train(model, graph, batches, key_train, args, reference, target, console)
    theta = trained.mask.theta.detach().float().cpu()
    circuit = top_k_circuit(theta, args.edges)

    console.log(f"\n[2/3] Evidence: faithfulness at {len(sizes)} sizes, {args.null_size} random circuits per size "
                f"and null ({', '.join(args.nulls)})")
    scorer = CircuitScorer(model, graph, batches, metric=args.metric, ablation=args.ablation, reference=reference,
                           chunk_size=args.chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CircuitEvidenceWarning)  # listed after the summary instead
        evidence = circuit_evidence(key_null, scorer, theta, sizes, num_null=args.null_size, nulls=args.nulls,
                                    chance=chance_level(args.metric, int(model.config.vocab_size)))
    i = evidence["curve"]["sizes"].index(args.edges)
    results = {
        "command": "circuit",
        "neurosurgeon_version": __version__,
        "config": {k: getattr(args, k) for k in ("model", "data", "metric", "ablation", "edges", "steps", "lr",
                                                 "lambda_lr", "strategy", "batch_size", "null_size", "nulls",
                                                 "restarts", "seed", "chunk_size", "threads")}
                  | {"target_sparsity": target, "sizes": sizes, "device": str(device)},
        "model": {"class": type(model).__name__, "architecture": graph.architecture.name,
                  "vocab_size": int(model.config.vocab_size)},
        "graph": {"edges": graph.num_edges, "writers": len(graph.writers), "readers": len(graph.readers),
                  "layers": graph.layers, "heads": graph.heads, "kv_heads": graph.kv_heads},
        "data": data,
        "circuit": {"edges": args.edges, "names": graph.edge_names(circuit), "score": evidence["curve"]["score"][i],
                    "faithfulness": evidence["curve"]["faithfulness"][i],
                    "null": {n: v["sizes"][i] for n, v in evidence["null"].items()}},
        "training": {"history": trained.history},
        "evidence": evidence,
    }

    if args.restarts:
        console.log(f"\n[+] Stability: {args.restarts} more circuit(s) from other seeds and bootstrap resamples")
        found = [circuit]
        for r in range(args.restarts):
            key_data, key_fit = nr.split(nr.fold_in(key_restarts, r), 2)
            again = _train(model, graph, resample(key_data), key_fit, args, reference, target, console)
            found.append(top_k_circuit(again.mask.theta.detach().float().cpu(), args.edges))
        results["stability"] = stability(found)
    results["warnings"] = evidence.pop("warnings")  # once, at the top

    console.log("\n[3/3] Writing")
    title = (f"{args.edges} of {graph.num_edges:,} edges: {args.metric} {evidence['curve']['score'][i]:.3g}, "
             f"faithfulness {evidence['curve']['faithfulness'][i]:.3f}")
    results["files"] = {name: str(out / name) for name in OUTPUT_FILES}
    _write_all(out, {
        "circuit.json": lambda p: to_circuit_json(graph, circuit, theta, path=p),
        "circuit.png": lambda p: draw_circuit(graph, circuit, theta, p, title=title),
        "faithfulness.png": lambda p: draw_faithfulness(evidence, args.edges, graph.num_edges, p),
        "results.json": lambda p: p.write_text(json.dumps(_plain(results), indent=2) + "\n"),
    })
    print()
    print(_summary(results))
    print()
    if results["warnings"]:
        print(format_warnings(results["warnings"]))
        print()
    print("wrote " + ", ".join(results["files"].values()))
    return results
