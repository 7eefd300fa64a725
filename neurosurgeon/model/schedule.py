"""Temperature annealing for continuous sparsification (Savarese et al. 2020, sec. 3).

The soft mask sigma(beta * theta) approaches the hard 1[theta > 0] as beta grows; training
raises beta exponentially from ``initial`` to ``final_temp`` over ``epochs`` epochs, i.e.
multiplies it by ``(final_temp / initial) ** (1 / epochs)`` after each epoch (the reference's
``TemperatureCallback`` with ``initial = 1``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import TrainerCallback

from ..functional._checks import check_temperature
from ..functional.strategies import STRATEGIES
from ._layers import require_mask_layers

__all__ = ["TemperatureSchedule", "TemperatureCallback", "set_temperature", "get_temperature", "advance_noise"]


def _annealed(model: nn.Module):
    """The mask layers whose strategy's training schedule raises the temperature (the strategy
    table's ``anneal``: continuous sparsification's beta)."""
    all_layers = require_mask_layers(model).values()
    layers = [m for m in all_layers if anneals_temperature(m.strategy)]
    if not layers:
        annealing = " or ".join(name.replace("_", "-") for name in STRATEGIES if anneals_temperature(name))
        raise ValueError(f"model has no {annealing} layers: only they anneal a temperature; its mask layers use "
                         f"{sorted({m.strategy for m in all_layers})}")
    return layers


def anneals_temperature(strategy: str) -> bool:
    """Whether ``strategy``'s training schedule raises its temperature (its table row's ``anneal``)."""
    return STRATEGIES[strategy].anneal == "temperature"


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Set beta of every continuous-sparsification layer of ``model``.

    Args:
        model: a model with continuous-sparsification mask layers.
        temperature: finite and > 0.
    """
    t = check_temperature(temperature)
    for layer in _annealed(model):
        layer.temperature = t


def get_temperature(model: nn.Module) -> float:
    """beta shared by ``model``'s continuous-sparsification layers (ValueError if they differ)."""
    temps = {layer.temperature for layer in _annealed(model)}
    if len(temps) > 1:
        raise ValueError(f"the layers have different temperatures: {sorted(temps)}")
    return temps.pop()


class TemperatureSchedule:
    """Exponential temperature annealing from ``initial`` to ``final_temp`` over ``epochs`` epochs.

    ``temperature_at(e) = initial * (final_temp / initial) ** (min(e, epochs) / epochs)``.
    Call :meth:`start` before training (sets ``initial``), :meth:`step` after each epoch; or
    hand :meth:`callback` to a ``transformers.Trainer``.

    Args:
        final_temp: beta after ``epochs`` epochs (e.g. 200), finite and > 0.
        epochs: number of annealing epochs, a positive int.
        initial: beta at epoch 0 (default 1.0).

    Example:
        >>> s = TemperatureSchedule(100.0, epochs=2)
        >>> [s.temperature_at(e) for e in range(4)]
        [1.0, 10.0, 100.0, 100.0]
    """

    def __init__(self, final_temp: float, epochs: int, initial: float = 1.0):
        self.final_temp = check_temperature(final_temp, "final_temp")
        self.initial = check_temperature(initial, "initial")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        self.epochs = epochs
        self.epoch = 0

    def temperature_at(self, epoch: int) -> float:
        """beta after ``epoch`` completed epochs."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        frac = min(epoch, self.epochs) / self.epochs
        return self.final_temp if frac == 1 else self.initial * (self.final_temp / self.initial) ** frac

    def start(self, model: nn.Module) -> float:
        """Reset to epoch 0 and set the initial temperature on ``model``; returns it."""
        self.epoch = 0
        set_temperature(model, self.initial)
        return self.initial

    def step(self, model: nn.Module) -> float:
        """Count one finished epoch and set the next temperature on ``model``; returns it."""
        self.epoch += 1
        t = self.temperature_at(self.epoch)
        set_temperature(model, t)
        return t

    def state_dict(self) -> dict:
        """The schedule's state, to resume training."""
        return {"final_temp": self.final_temp, "epochs": self.epochs, "initial": self.initial, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`."""
        self.__init__(state["final_temp"], state["epochs"], state["initial"])
        self.epoch = int(state["epoch"])

    def callback(self) -> "TemperatureCallback":
        """A ``transformers.TrainerCallback`` that runs this schedule."""
        return TemperatureCallback(self)

    def __repr__(self) -> str:
        return f"TemperatureSchedule(final_temp={self.final_temp}, epochs={self.epochs}, initial={self.initial}, epoch={self.epoch})"


class TemperatureCallback(TrainerCallback):
    """``transformers.Trainer`` adapter: :meth:`TemperatureSchedule.start` when training
    begins, :meth:`TemperatureSchedule.step` at the end of every epoch.

    Args:
        schedule: the :class:`TemperatureSchedule` to run.
    """

    def __init__(self, schedule: TemperatureSchedule):
        self.schedule = schedule

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.schedule.start(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.schedule.step(model)


@torch.no_grad()
def advance_noise(model: nn.Module, steps: int = 1) -> None:
    """Advance the hard-concrete noise step of every mask layer of ``model`` by ``steps``.

    An eager training forward does this by itself after drawing its noise. Under
    ``torch.compile`` and ``torch.func`` transforms a forward mutates nothing, so call this
    between the steps of a compiled training loop to draw fresh noise each step. A step
    counter shared by tied layers advances once.

    Example:
        >>> import torch.nn as nn, neurosurgeon as ns
        >>> net = nn.Sequential(nn.Linear(4, 2)); _ = ns.inject_masks(net, "0", strategy="hard_concrete", key=0)
        >>> ns.advance_noise(net); int(net[0].noise_step)
        1
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    seen = set()
    for layer in require_mask_layers(model).values():
        if STRATEGIES[layer.strategy].needs_key and id(layer.noise_step) not in seen:
            seen.add(id(layer.noise_step))
            layer.noise_step.add_(steps)
