"""``MaskParameter``: an ``nn.Parameter`` for mask parameters that notices edits through ``.data``.

A masked layer reuses its hard mask h (eval mode) while theta is unchanged, and its fused CS L0
term while training. "Unchanged" is read from the tensor's version counter, which every
in-place op bumps (an optimizer step, ``load_state_dict``, ``copy_`` under ``no_grad``, a view
edited in place), except edits through ``.data``: that attribute returns an alias with a
version counter of its own, so ``theta.data.fill_(0)`` would leave a cached mask stale. This
class counts every access to ``.data`` (read or assignment) and the layers add the count to the
version they compare, so such an edit always invalidates what was cached from theta.

What no Python attribute can see, and so stays the caller's to avoid: writing through an alias
taken *before* the mask was cached (``d = theta.data``, a forward, then ``d.zero_()``), or
through memory shared outside torch (``theta.detach().numpy()``). A tensor that has lost this
class (``pickle`` and ``load_state_dict``, ``assign=True`` included, keep it; ``torch.__future__``
parameter swapping may not) is never cached from: the layer recomputes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["MaskParameter", "data_accesses"]

_DATA = torch._C.TensorBase.data  # the C attribute a plain Parameter's ``.data`` goes through


def _rebuild(data: torch.Tensor, requires_grad: bool) -> "MaskParameter":
    return MaskParameter(data, requires_grad)


class MaskParameter(nn.Parameter):
    """An ``nn.Parameter`` that counts accesses to ``.data`` (see the module docstring).

    Example:
        >>> import torch
        >>> p = MaskParameter(torch.zeros(3))
        >>> data_accesses(p)
        0
        >>> _ = p.data.fill_(1.0)
        >>> data_accesses(p), p._version  # the edit did not bump the version; the count saw it
        (1, 0)
    """

    @property
    def data(self) -> torch.Tensor:
        self._touch()
        return _DATA.__get__(self)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        self._touch()
        _DATA.__set__(self, value)

    def _touch(self) -> None:
        self.__dict__["_data_accesses"] = self.__dict__.get("_data_accesses", 0) + 1

    def __repr__(self) -> str:
        # As a plain Parameter prints (torch would print "Parameter(MaskParameter(...))").
        return nn.Parameter.__repr__(nn.Parameter(_DATA.__get__(self), self.requires_grad))

    def __reduce_ex__(self, protocol):
        # nn.Parameter pickles as a plain Parameter; keep the class (the count starts afresh).
        return _rebuild, (_DATA.__get__(self), self.requires_grad)


def data_accesses(t: torch.Tensor) -> int | None:
    """How often ``t.data`` was read or assigned, for a :class:`MaskParameter`; None otherwise
    (then edits through ``.data`` cannot be seen, and nothing should be cached from ``t``)."""
    return t.__dict__.get("_data_accesses", 0) if isinstance(t, MaskParameter) else None
