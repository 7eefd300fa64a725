"""``neurosurgeon analyze``: the demo's analysis on a local Hugging Face model and a labelled file.

Data format (CSV with a header row, or JSONL with one object per line):

- ``text`` (required): the input text.
- ``label`` (required): for a sequence classifier, a class index (``0``, ``1``, ...) or a name
  in the model's ``config.label2id``; for a causal LM, the continuation whose *first token*
  the model should predict after ``text`` (e.g. ``" yes"`` for GPT-2-style tokenizers).
- ``subtask`` (optional): which sub-task the example belongs to. The subnetwork is found for
  ``--subtask`` (default: the first one in the file) and tested on all of them. Without this
  column every example is in one sub-task, ``all``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import __version__
from ._run import CLIError, Console, maskable_names, resolve_device, run_analysis, run_config, select_targets
from ._warnings import at_or_below_chance, chance_levels
from .task import Examples

__all__ = ["run_analyze", "read_examples", "default_targets"]

_HEAD_NAMES = ("score", "classifier", "lm_head", "qa_outputs", "pooler", "out_proj")


def read_examples(path: Path) -> list[dict]:
    """Rows ``{"text", "label", "subtask"}`` of a .csv / .jsonl file (CLIError on malformed data)."""
    if not path.exists():
        raise CLIError(f"--data {str(path)!r}: no such file")
    if not path.is_file():
        raise CLIError(f"--data {str(path)!r}: not a file")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: CSVs saved by Excel
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            missing = [c for c in ("text", "label") if c not in fields]
            if missing:
                raise CLIError(f"--data {str(path)!r}: the header must name the columns text,label[,subtask]; "
                               f"missing {', '.join(missing)} (found: {', '.join(fields) or 'nothing'})")
            for i, r in enumerate(reader, start=2):
                if None in r or any(r.get(c) is None for c in fields):
                    raise CLIError(f"--data {str(path)!r} line {i}: expected {len(fields)} fields, as in the header")
                rows.append({"text": r["text"], "label": r["label"], "subtask": r.get("subtask"), "line": i})
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CLIError(f"--data {str(path)!r} line {i}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
                    raise CLIError(f"--data {str(path)!r} line {i}: each line must be an object with "
                                   "\"text\" and \"label\" (and optionally \"subtask\")")
                rows.append({"text": obj["text"], "label": obj["label"], "subtask": obj.get("subtask"), "line": i})
    else:
        raise CLIError(f"--data {str(path)!r}: unknown format {suffix or '(no extension)'}; use .csv or .jsonl")
    if not rows:
        raise CLIError(f"--data {str(path)!r}: no examples")
    for r in rows:
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise CLIError(f"--data {str(path)!r} line {r['line']}: empty or non-string text")
        if r["label"] is None or (isinstance(r["label"], str) and r["label"] == ""):
            raise CLIError(f"--data {str(path)!r} line {r['line']}: empty label")
        if r["subtask"] is not None and not isinstance(r["subtask"], (str, int)):
            raise CLIError(f"--data {str(path)!r} line {r['line']}: subtask must be a string, got {r['subtask']!r}")
    has_sub = [r["subtask"] not in (None, "") for r in rows]
    if any(has_sub) and not all(has_sub):
        first = next(r for r, h in zip(rows, has_sub) if not h)
        raise CLIError(f"--data {str(path)!r} line {first['line']}: missing subtask (give every example one, or none)")
    for r in rows:
        r["subtask"] = str(r["subtask"]) if r["subtask"] not in (None, "") else "all"
    return rows


def load_model(model_dir: Path, kind: str):
    if not model_dir.exists():
        raise CLIError(f"--model {str(model_dir)!r}: no such directory")
    if not (model_dir / "config.json").is_file():
        raise CLIError(f"--model {str(model_dir)!r}: no config.json; expected a directory written by save_pretrained")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad config
        raise CLIError(f"--model {str(model_dir)!r}: cannot read config.json ({e})") from None
    if kind == "auto":
        archs = config.architectures or []
        if any(a.endswith("ForSequenceClassification") for a in archs):
            kind = "classification"
        elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            kind = "causal-lm"
        else:
            raise CLIError(f"--model {str(model_dir)!r}: cannot tell the task from architectures={archs}; "
                           "pass --task classification or --task causal-lm")
    loader = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"--model {str(model_dir)!r}: cannot load a tokenizer from it ({type(e).__name__}: {e}); "
                       "save one there with tokenizer.save_pretrained") from None
    try:
        # Eager attention: the baselines run the model under torch.func.vmap.
        model = loader.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"--model {str(model_dir)!r}: cannot load it as {loader.__name__} ({type(e).__name__}: {e})") from None
    return model, tokenizer, kind


def default_targets(model: nn.Module) -> list[str]:
    """Every maskable layer except the output head (``lm_head``, ``score``, ``classifier``, ...)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for n in maskable_names(model):
        m = model.get_submodule(n)
        if m is head or any(part in _HEAD_NAMES for part in n.split(".")):
            continue
        names.append(n)
    return names


def _labels(rows, model, tokenizer, kind) -> tuple[torch.Tensor, list[int] | None, list[str]]:
    """Class index per row; for a causal LM also the candidate token of each class."""
    if kind == "classification":
        n = int(model.config.num_labels)
        label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
        out = []
        for r in rows:
            raw = r["label"]
            if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().lstrip("-").isdigit()):
                y = int(raw)
            elif str(raw) in label2id:
                y = label2id[str(raw)]
            else:
                raise CLIError(f"--data line {r['line']}: label {raw!r} is neither a class index nor one of the "
                               f"model's labels {sorted(label2id)}")
            if not 0 <= y < n:
                raise CLIError(f"--data line {r['line']}: label {y} is out of range for a model with {n} labels")
            out.append(y)
        return torch.tensor(out), None, [str(i) for i in range(n)]
    classes = sorted({str(r["label"]) for r in rows})
    if len(classes) < 2:
        raise CLIError(f"--data: a causal LM analysis needs at least two different labels, got {classes}")
    tokens = []
    for c in classes:
        ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not ids:
            raise CLIError(f"--data: label {c!r} tokenizes to nothing")
        tokens.append(int(ids[0]))
    if len(set(tokens)) < len(tokens):
        dup = [c for c, t in zip(classes, tokens) if tokens.count(t) > 1]
        raise CLIError(f"--data: labels {dup} start with the same token; the prediction is the first label token, "
                       "so labels must differ in it")
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[str(r["label"])] for r in rows]), tokens, classes


def _split(subtask: torch.Tensor, fraction: float, seed: int, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/test indices: ``fraction`` of each sub-task (at least one example) held out."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for s in range(len(names)):
        idx = torch.nonzero(subtask == s).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if len(idx) < 2:
            raise CLIError(f"--data: sub-task {names[s]!r} has {len(idx)} example(s); need at least 2 "
                           "(one to train the masks or fill the test set, one to test)")
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(test)


def run_analyze(args) -> dict:
    t_start = time.perf_counter()
    console = Console(args.quiet)
    if not 0 < args.test_fraction < 1:
        raise CLIError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    model_dir, data_path = Path(args.model), Path(args.data)
    if not model_dir.exists():
        raise CLIError(f"--model {str(model_dir)!r}: no such directory")
    rows = read_examples(data_path)
    device = resolve_device(args.device)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        model, tokenizer, kind = load_model(model_dir, args.task)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()

    subtasks = list(dict.fromkeys(r["subtask"] for r in rows))
    target = args.subtask if args.subtask is not None else subtasks[0]
    if target not in subtasks:
        raise CLIError(f"--subtask {target!r} is not in the data; sub-tasks found: {subtasks}")
    subtasks.remove(target)
    subtasks.insert(0, target)  # the target sub-task is index 0 throughout
    labels, candidates, classes = _labels(rows, model, tokenizer, kind)

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise CLIError("the tokenizer has no pad, eos or unk token to pad a batch with")
    tokenizer.padding_side = "right"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=args.max_length,
                    return_tensors="pt")
    sub_index = {s: i for i, s in enumerate(subtasks)}
    data = Examples(enc["input_ids"], enc["attention_mask"], labels,
                    torch.tensor([sub_index[r["subtask"]] for r in rows]), tuple(subtasks))
    train_idx, test_idx = _split(data.subtask, args.test_fraction, args.seed, subtasks)
    train, test = data.select(train_idx).to(device), data.select(test_idx).to(device)
    mask_train = train.of_subtask(0)
    monitor = test.of_subtask(0)

    logits_fn = _sequence_logits if kind == "classification" else _causal_logits(torch.tensor(candidates, device=device))
    with torch.no_grad():
        logits = logits_fn(model, test)
    correct = logits.argmax(-1) == test.labels
    base = {s: float(correct[test.subtask == i].float().mean()) for i, s in enumerate(subtasks)}
    console.log(f"neurosurgeon {__version__} analyze: {type(model).__name__} from {str(model_dir)!r} ({kind}, {device})")
    console.log(f"  {len(rows)} examples from {str(data_path)!r}: sub-tasks {subtasks}, target {target!r}; "
                f"{len(train)} train / {len(test)} test")
    console.log("\n[1/3] Model loaded; test accuracy: " + ", ".join(f"{s} {a:.3f}" for s, a in base.items()))
    chance = chance_levels(test.labels, test.subtask, subtasks, int(logits.shape[-1]))
    low = [s for s in subtasks if at_or_below_chance(base[s], chance[s])]
    if low:  # said now, before the mask training; the warnings after the table say it in full
        console.log("  note: at or below chance on " + ", ".join(f"{s} (chance {chance[s]['chance']:.3f})" for s in low)
                    + "; those sub-tasks' numbers will not be meaningful")

    names = select_targets(model, args.targets) if args.targets else default_targets(model)
    if not names:
        raise CLIError("the model has no maskable layer outside its output head; name layers with --targets")
    results = {
        "command": "analyze",
        "neurosurgeon_version": __version__,
        "config": {**run_config(args, names, str(device),
                                default_targets=["(default: every maskable layer except the output head)"]),
                   "model": str(model_dir), "data": str(data_path),
                   "task": kind, "test_fraction": args.test_fraction, "max_length": args.max_length},
        "model": {"description": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                  "classes": classes},
        "timing": {},
    }
    return run_analysis(model=model, names=names, mask_train=mask_train, monitor=monitor, test=test,
                        logits_fn=logits_fn, args=args, console=console, results=results, t_start=t_start)


def _sequence_logits(model, batch: Examples) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _causal_logits(candidates: torch.Tensor):
    """Logits of each class's first label token at the last non-padding position, ``(N, C)``."""

    def fn(model, batch: Examples) -> torch.Tensor:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        last = batch.attention_mask.sum(1) - 1
        rows = torch.arange(logits.shape[-3], device=logits.device)
        return logits[rows, last][:, candidates]

    return fn
