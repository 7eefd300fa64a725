"""Saving and loading masks as safetensors (no pickle).

A mask file holds, for every mask layer ``<name>``: ``<name>.weight_mask_params`` (and
``<name>.bias_mask_params`` when the bias is masked; magnitude pruning has neither),
``<name>.mask_key`` and ``<name>.noise_step``, so random ablations and hard-concrete noise
are reproduced exactly after loading. The metadata ``neurosurgeon`` entry is JSON with each
layer's strategy, layer kind, mask unit, bias flag and hyper-parameters, and a SHA-256 of the
tensors: safetensors checks the file's structure but not its contents, so a flipped byte
would otherwise load as a silently different subnetwork.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ._layers import layer_spec, require_mask_layers
from ._sharding import gathered, shard_like, sharded_mask_layers, writes_files

__all__ = ["save_masks", "load_masks", "mask_state"]

FORMAT = "neurosurgeon.masks/1"


def _tensors(name: str, layer) -> dict[str, torch.Tensor]:
    prefix = f"{name}." if name else ""
    out = {}
    if layer_spec(layer).has_params:
        out[prefix + "weight_mask_params"] = layer.weight_mask_params
        if layer.mask_bias:
            out[prefix + "bias_mask_params"] = layer.bias_mask_params
    out[prefix + "mask_key"] = layer.mask_key
    out[prefix + "noise_step"] = layer.noise_step
    return out


def _describe(name: str, layer) -> dict:
    spec = layer_spec(layer)
    return {"strategy": spec.strategy, "kind": spec.kind, "mask_unit": layer.mask_unit,
            "unit_sizes": spec.unit_sizes, "mask_bias": spec.mask_bias, "hparams": spec.hparams}


def mask_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask tensor of ``model`` (mask parameters, keys, noise counters), detached copies,
    by ``"<layer>.<tensor>"``: what :func:`save_masks` writes. Sharded (``DTensor``) tensors are
    gathered whole, so every rank of a sharded model must call it."""
    out = {}
    for name, layer in require_mask_layers(model).items():
        for k, t in _tensors(name, layer).items():
            out[k] = gathered(t.detach()).cpu().clone().contiguous()
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a mask file, or a ValueError saying why it is unreadable."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("neurosurgeon")
        tensors = load_file(path)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None
    if raw is None:
        raise ValueError(f"{path} is not a neurosurgeon mask file (no 'neurosurgeon' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} has corrupted neurosurgeon metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} has mask format {fmt!r}; this version reads {FORMAT!r}")
    if "sha256" in meta and meta["sha256"] != _digest(tensors):
        raise ValueError(f"{path} is corrupted: its tensors do not match the checksum written with them")
    return meta, tensors


def save_masks(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s masks (parameters and keys) to a safetensors file.

    A sharded model (FSDP2's ``fully_shard``: ``DTensor`` mask parameters) writes the file an
    unsharded one would: call it on every rank; the full tensors are gathered and rank 0 writes.

    Args:
        model: a model with mask layers.
        path: file to write.
    """
    layers = require_mask_layers(model)
    state = mask_state(model)
    meta = {"format": FORMAT, "layers": {n: _describe(n, m) for n, m in layers.items()}, "sha256": _digest(state)}
    if not sharded_mask_layers(model) or writes_files():
        save_file(state, os.fspath(path), metadata={"neurosurgeon": json.dumps(meta)})
    if sharded_mask_layers(model):
        import torch.distributed as dist

        dist.barrier()  # the file is complete on every rank's return


def load_masks(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> None:
    """Load masks written by :func:`save_masks` into ``model``'s mask layers.

    A sharded model (``DTensor`` mask parameters) loads on every rank, each keeping its shard.
    Every problem is found and reported before anything is changed: layers missing from the
    file or from the model (errors when ``strict``), and, always, layers whose strategy,
    mask unit, bias flag or tensor shapes differ.

    Args:
        model: a model with mask layers at the saved names.
        path: a file written by :func:`save_masks`.
        strict: require the file and the model to hold exactly the same mask layers.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated, corrupted or foreign file, or a list of every mismatch; in
            every case the model is unchanged.
    """
    path = os.fspath(path)
    meta, tensors = _read(path)
    saved_layers: dict = meta["layers"]
    layers = require_mask_layers(model)
    problems = []
    missing = [n for n in layers if n not in saved_layers]
    unexpected = [n for n in saved_layers if n not in layers]
    if strict and missing:
        problems.append(f"mask layers missing from the file: {missing}")
    if strict and unexpected:
        problems.append(f"mask layers in the file but not in the model: {unexpected}")
    plan = []
    for name, layer in layers.items():
        if name not in saved_layers:
            continue
        want, have = saved_layers[name], _describe(name, layer)
        for field in ("strategy", "kind", "mask_unit", "unit_sizes", "mask_bias"):
            if want.get(field) != have[field]:  # files from before unit patterns have no unit_sizes
                problems.append(f"{name or '<root>'}: {field} is {have[field]!r} in the model but {want[field]!r} in the file")
        for k, target in _tensors(name, layer).items():
            if k not in tensors:
                problems.append(f"{k}: missing from the file")
            elif tuple(tensors[k].shape) != tuple(target.shape):
                problems.append(f"{k}: shape {tuple(target.shape)} in the model but {tuple(tensors[k].shape)} in the file")
            else:
                plan.append((target, tensors[k]))
        plan_t = want["hparams"].get("temperature")
        if plan_t is not None and hasattr(layer, "temperature"):
            plan.append((layer, plan_t))
    if problems:
        raise ValueError(f"cannot load masks from {path}:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for target, value in plan:
            if isinstance(target, torch.Tensor):
                target.copy_(shard_like(value, target).to(device=target.device, dtype=target.dtype))
            else:
                target.temperature = value
