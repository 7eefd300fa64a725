"""``neurosurgeon compare A B``: how two saved subnetworks overlap, against chance, as a figure and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from .. import model as ns
from ..model.architectures import architecture_of
from ..model.visualize import draw_bars, layout_bars
from ._run import CLIError, Console

__all__ = ["run_compare"]

MASK_FILE = "masks.safetensors"


def _mask_file(text: str, which: str) -> Path:
    """A mask file, or the ``masks.safetensors`` inside a directory (a ``demo``/``analyze`` output)."""
    path = Path(text)
    if path.is_dir():
        if not (path / MASK_FILE).is_file():
            raise CLIError(f"{which} {text!r} is a directory without {MASK_FILE}; pass a mask file written by "
                           "save_masks or an output directory of 'neurosurgeon demo' / 'analyze'")
        return path / MASK_FILE
    if not path.is_file():
        raise CLIError(f"{which} {text!r}: no such file or directory")
    return path


def _load_model(text: str):
    """The model class named in ``DIR/config.json``, from local files only (its weights, when saved)."""
    model_dir = Path(text)
    if not (model_dir / "config.json").is_file():
        raise CLIError(f"--model {text!r}: no config.json; expected a directory written by save_pretrained")
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        cls = getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
        return cls.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad directory
        raise CLIError(f"--model {text!r}: cannot load it ({type(e).__name__}: {e})") from None


def run_compare(args) -> dict:
    """Compare the two mask files, print the table and write ``comparison.json`` and ``comparison.png``."""
    console = Console(args.quiet)
    paths = [_mask_file(args.a, "A"), _mask_file(args.b, "B")]
    model = _load_model(args.model) if args.model else None
    granularity = args.granularity
    if granularity == "block":
        if model is None:
            raise CLIError("--granularity block needs --model DIR, to split the attention projections into heads")
        try:
            architecture_of(model)
        except ValueError as e:
            raise CLIError(f"--granularity block: {e}. No head templates for this model: use --granularity "
                           "tensor or layer") from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {str(out)!r}: cannot create the output directory ({e.strerror})") from None
    console.log(f"neurosurgeon {__version__} compare: {paths[0]} vs {paths[1]}")
    try:
        table = ns.compare_subnetworks(paths[0], paths[1], model=model)
        bars = layout_bars(table, granularity, model=model)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    files = {"comparison": out / "comparison.json", "plot": out / "comparison.png"}
    labels = [args.label_a or paths[0].parent.name or "A", args.label_b or paths[1].parent.name or "B"]
    if labels[0] == labels[1]:
        labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
    n_bars = sum(len(r) for r in bars.values()) or 1
    fig = draw_bars(bars, two=True, granularity=granularity, model_labels=labels, figsize=(9, 1.6 + 0.32 * n_bars),
                    title_fontsize=12, label_fontsize=8,
                    title=f"{labels[0]} vs {labels[1]}: IoU {table.total.iou:.3f} (chance {table.total.expected_iou:.3f}, "
                          f"p = {table.total.p_value:.3g})")
    fig.savefig(files["plot"], dpi=110)
    result = {"command": "compare", "neurosurgeon_version": __version__,
              "inputs": {"a": str(paths[0]), "b": str(paths[1]), "model": args.model, "labels": labels,
                         "granularity": granularity},
              **table.to_dict(), "files": {k: str(v) for k, v in files.items()}}
    files["comparison"].write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"\nwrote {files['plot']}, {files['comparison']}")
    return result
