"""Choosing the layers to mask: exact names, glob patterns and layer types.

Patterns follow path-glob rules on dotted module names: ``*`` matches within one name part
(``transformer.h.*.mlp.c_fc``), ``**`` matches any number of parts (``**.c_fc``), ``?`` one
character, ``[...]`` a character class.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

import torch.nn as nn

from ..modules import MaskLayer
from ..modules._layer_types import SUPPORTED_LAYERS, UnsupportedLayerError

__all__ = ["SUPPORTED_LAYERS", "resolve_targets", "match_names"]

_GLOB_CHARS = set("*?[")


def _supported_names() -> str:
    return ", ".join(f"{t.__module__}.{t.__qualname__}" for t in SUPPORTED_LAYERS)


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise ValueError(f"unterminated '[' in target pattern {pattern!r}")
            cls = pattern[i + 1 : j]
            out.append("[^" + re.escape(cls[1:]) + "]" if cls.startswith("!") else "[" + re.escape(cls) + "]")
            i = j + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _as_list(targets) -> list:
    if isinstance(targets, (str, type)):
        return [targets]
    if isinstance(targets, Iterable):
        items = list(targets)
        if not items:
            raise ValueError("targets is empty; give layer names, glob patterns or layer types to mask")
        return items
    raise TypeError(f"targets must be a name, a glob pattern, a layer type or a list of these, got {type(targets).__name__}")


def match_names(names: Iterable[str], patterns) -> list[str]:
    """Names (in the given order) matching any of ``patterns`` (exact names or globs).

    Raises:
        ValueError: naming every pattern that matches nothing.
    """
    names = list(names)
    chosen: set[str] = set()
    for p in _as_list(patterns):
        if not isinstance(p, str):
            raise TypeError(f"layer names must be str (names or glob patterns), got {p!r}")
        hits = [n for n in names if _glob_regex(p).match(n)] if _GLOB_CHARS & set(p) else [n for n in names if n == p]
        if not hits:
            close = difflib.get_close_matches(p, names, n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(f"target {p!r} matches no mask layer{hint} (mask layers: {names[:8]}{'...' if len(names) > 8 else ''})")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def resolve_targets(model: nn.Module, targets) -> list[str]:
    """Every module path of ``model`` that ``targets`` selects, in ``named_modules`` order.

    Args:
        model: the model to search.
        targets: an exact module name, a glob pattern, a layer type (``nn.Linear``,
            ``transformers.pytorch_utils.Conv1D``, ``nn.Conv1d``, ``nn.Conv2d``), or a list
            mixing these. An exact name must be a supported layer; a pattern or a type selects
            the supported layers among what it matches.

    Returns:
        list of module paths; a module registered at two paths appears under both.

    Raises:
        ValueError: a name or pattern matches nothing, or names an existing mask layer.
        TypeError: a named layer, or every layer a pattern matches, has an unsupported type.
    """
    modules = list(model.named_modules(remove_duplicate=False))
    by_name = dict(modules)
    chosen: set[str] = set()
    for t in _as_list(targets):
        if isinstance(t, type):
            if t not in SUPPORTED_LAYERS:
                raise UnsupportedLayerError(f"cannot mask layers of type {t.__module__}.{t.__qualname__}; supported: {_supported_names()}")
            hits = [n for n, m in modules if type(m) is t]
            if not hits:
                raise ValueError(f"target type {t.__qualname__} matches no layer of {type(model).__name__}")
            chosen.update(hits)
        elif isinstance(t, str):
            if _GLOB_CHARS & set(t):
                rx = _glob_regex(t)
                matched = [(n, m) for n, m in modules if n and rx.match(n)]
                if not matched:
                    raise ValueError(f"target pattern {t!r} matches no module of {type(model).__name__}")
                hits = [n for n, m in matched if type(m) in SUPPORTED_LAYERS]
                if not hits:
                    shown = ", ".join(f"{n} ({type(m).__name__})" for n, m in matched[:5])
                    raise UnsupportedLayerError(f"target pattern {t!r} matches no maskable layer, only {shown}; supported: {_supported_names()}")
                chosen.update(hits)
            else:
                if t not in by_name:
                    close = difflib.get_close_matches(t, list(by_name), n=3)
                    hint = f"; did you mean {close}?" if close else ""
                    raise ValueError(f"target {t!r} is not a module of {type(model).__name__}{hint}")
                m = by_name[t]
                if not t:
                    raise ValueError("target '' is the model itself, which cannot be replaced in place; "
                                     "wrap it (e.g. nn.Sequential(layer)) or use the layer classes directly")
                if isinstance(m, MaskLayer):
                    raise ValueError(f"target {t!r} is already a mask layer ({type(m).__name__})")
                if type(m) not in SUPPORTED_LAYERS:
                    raise UnsupportedLayerError(f"cannot mask {t!r}: it is a {type(m).__module__}.{type(m).__qualname__}; supported: {_supported_names()}")
                chosen.add(t)
        else:
            raise TypeError(f"each target must be a str (name or glob pattern) or a layer type, got {t!r}")
    return [n for n, _ in modules if n in chosen]
