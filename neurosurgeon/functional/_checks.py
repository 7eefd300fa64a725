"""Argument validation shared by the functional core and the module shells.

Every check raises ``ValueError``/``TypeError`` naming the parameter, the value and what is
allowed, and runs at the boundary only: kernels never re-parse strings.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming the options."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(allowed)}; got {value!r} ({type(value).__name__})")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def table_row(name: str, value: Any, table: dict):
    """``table[value]`` for a row's name; ValueError naming the rows otherwise (TypeError for a non-str)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(table)}; got {value!r} ({type(value).__name__})")
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{name} must be one of {list(table)}, got {value!r}") from None


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool,)) and not (isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def _as_float(name: str, value: Any) -> float:
    if torch.compiler.is_compiling():
        return value  # validated at the boundary already; a traced graph must not branch on it
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point
    ):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A temperature must be finite and strictly positive."""
    v = _as_float(name, value)
    if torch.compiler.is_compiling():
        return v
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v


def check_fraction(name: str, value: Any) -> float:
    """A percentage given as a fraction must lie in [0, 1]."""
    v = _as_float(name, value)
    if torch.compiler.is_compiling():
        return v
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_finite(name: str, value: Any) -> float:
    v = _as_float(name, value)
    if torch.compiler.is_compiling():
        return v
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_stretch(left: Any, right: Any) -> tuple[float, float]:
    """Hard-concrete stretch limits must satisfy l < 0 < 1 < r (Louizos et al. 2018, sec. 4)."""
    lv = check_finite("left_stretch", left)
    rv = check_finite("right_stretch", right)
    if not lv < 0.0:
        raise ValueError(f"left_stretch must be < 0, got {left!r}")
    if not rv > 1.0:
        raise ValueError(f"right_stretch must be > 1, got {right!r}")
    return lv, rv


def check_key(key: Any, name: str = "key") -> torch.Tensor:
    """A PRNG key is an integer tensor of shape (2,) holding two 32-bit words."""
    if not isinstance(key, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (2,) and dtype int64 (from neurosurgeon.functional.random.key), "
            f"got {type(key).__name__}"
        )
    if key.dtype != torch.int64 or tuple(key.shape) != (2,):
        raise ValueError(
            f"{name} must have shape (2,) and dtype torch.int64 (use neurosurgeon.functional.random.key(seed)), "
            f"got shape {tuple(key.shape)} and dtype {key.dtype}"
        )
    return key


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def transformed(*tensors: torch.Tensor | None) -> bool:
    """True under ``torch.compile`` tracing or when a tensor is wrapped by a functorch transform
    (``vmap``, ``grad``): then host reads, ``out=`` buffers and eager-only fast paths must give way
    to plain composable ops. ``None`` entries are ignored."""
    return torch.compiler.is_compiling() or any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def in_transform() -> bool:
    """True inside ``torch.compile`` tracing or any ``torch.func`` transform (``grad``, ``vmap``,
    ``jacrev``...), whichever tensors are involved: where a module must mutate nothing."""
    return torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None


def concrete_int(t: torch.Tensor) -> int | None:
    """``int(t)`` when ``t`` can be read on the host without breaking a transform, else None.

    Under ``torch.compile`` tracing or when ``t`` is batched by ``vmap``, reading a value would
    break the graph; callers then fall back to value-independent code.
    """
    return None if transformed(t) else int(t)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """A size, stride or count: a Python int (not bool) > 0 (or >= 0 with ``allow_zero``)."""
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {lo}, got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def check_broadcasts_to(name: str, t: torch.Tensor, target_name: str, shape: tuple[int, ...]) -> None:
    """``t`` must broadcast to ``shape`` without changing it (a mask applied to a parameter)."""
    shape = tuple(shape)
    ok = t.dim() <= len(shape) and all(a in (1, b) for a, b in zip(reversed(tuple(t.shape)), reversed(shape)))
    if not ok:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {target_name}'s shape {shape}")


def renamed_keywords(**renames: str):
    """Decorator: keyword ``old`` is accepted for ``renames[old]`` with a DeprecationWarning."""
    def wrap(fn):
        @functools.wraps(fn)
        def renamed(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old!r} and its new name {new!r}")
                    warnings.warn(f"{fn.__name__}(): {old!r} is now {new!r}", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return renamed
    return wrap
