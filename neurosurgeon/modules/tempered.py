"""The ``temperature`` property of the strategies that have one."""

from __future__ import annotations

from ..functional._checks import check_temperature

__all__ = ["TemperedMixin"]


class TemperedMixin:
    """The ``temperature`` property: beta in sigma(beta * theta) (continuous sparsification) or of
    the concrete distribution (hard concrete)."""

    _temperature: float

    @property
    def temperature(self) -> float:
        """The temperature beta; setting it validates (finite, > 0) and changes nothing else."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)
