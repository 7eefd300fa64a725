"""``SubnetworkProbe``: subnetwork probing (Cao et al. 2021, "Low-Complexity Probing via Finding
Subnetworks", arXiv 2104.03514) under NeuroSurgeon 0.1.0's names.

A binary mask over a frozen model (a :class:`CircuitModel`) and a linear or MLP probe on one
residual-stream vector (a :class:`ResidualUpdateModel` cache entry) are trained together on
``cross_entropy(probe(vectors), labels) + l0_lambda * L0(mask)`` (the paper's eq. 2 objective
with the L0 term of the circuit's mask method).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from ..functional._checks import check_choice
from ..modules.cache import soft_masks_for_l0
from . import baselines
from .circuit import CircuitConfig, CircuitModel
from .residual import ResidualUpdateModel, ResidualUpdateModelConfig, plan_hooks, vector_keys

__all__ = ["SubnetworkProbeConfig", "SubnetworkProbe"]

_LABELINGS = ("sequence", "token")


class SubnetworkProbeConfig(PretrainedConfig):
    """What a :class:`SubnetworkProbe` masks, records and classifies (NeuroSurgeon 0.1.0's config).

    Values are checked when the :class:`SubnetworkProbe` is built.

    Args:
        probe_vectors: the cache key to probe, e.g. ``"mlp_stream_5"`` (see :func:`vector_keys`).
        n_classes: number of classes of the probing task.
        circuit_config: a :class:`CircuitConfig`: what to mask (``freeze_base`` must be True).
        resid_config: a :class:`ResidualUpdateModelConfig` recording ``probe_vectors``: one
            block, and either ``mlp`` or ``attn``.
        intermediate_size: hidden width of an MLP probe; -1 (default): a linear probe.
        labeling: ``"sequence"`` (one label per example) or ``"token"`` (one per marked token).
    """

    def __init__(self, probe_vectors: str = "", n_classes: int = 2, circuit_config=None, resid_config=None,
                 intermediate_size: int = -1, labeling: str = "sequence", **kwargs):
        super().__init__(**kwargs)
        # Dicts come back from a saved config.json.
        if isinstance(circuit_config, dict):
            circuit_config = CircuitConfig(**circuit_config)
        if isinstance(resid_config, dict):
            resid_config = ResidualUpdateModelConfig(**resid_config)
        self.probe_vectors, self.n_classes = probe_vectors, n_classes
        self.circuit_config, self.resid_config = circuit_config, resid_config
        self.intermediate_size, self.labeling = intermediate_size, labeling

    def to_dict(self) -> dict[str, Any]:
        """The fields, with the two nested configs as dicts."""
        out = super().to_dict()
        for name in ("circuit_config", "resid_config"):
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, PretrainedConfig) else value
        return out


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check(config: SubnetworkProbeConfig) -> None:
    if not isinstance(config.circuit_config, CircuitConfig):
        raise TypeError(f"config.circuit_config must be a CircuitConfig, got {type(config.circuit_config).__name__}")
    if not isinstance(config.resid_config, ResidualUpdateModelConfig):
        raise TypeError(f"config.resid_config must be a ResidualUpdateModelConfig, got "
                        f"{type(config.resid_config).__name__}")
    if config.circuit_config.freeze_base is not True:
        raise ValueError("config.circuit_config.freeze_base is False; subnetwork probing masks a frozen model, "
                         "allowed: True")
    resid = config.resid_config
    if not isinstance(resid.target_layers, (list, tuple)) or len(resid.target_layers) != 1:
        raise ValueError(f"config.resid_config.target_layers is {resid.target_layers!r}; a probe reads one block, "
                         f"allowed: a list of one index")
    if bool(resid.mlp) == bool(resid.attn):
        raise ValueError(f"config.resid_config has mlp={resid.mlp!r}, attn={resid.attn!r}; a probe reads one "
                         f"update, allowed: exactly one of them True")
    check_choice("config.labeling", config.labeling, _LABELINGS)
    _int("config.n_classes", config.n_classes, 2)
    if config.intermediate_size != -1:
        _int("config.intermediate_size (-1: a linear probe)", config.intermediate_size, 1)
    recorded = vector_keys(resid)
    if config.probe_vectors not in recorded:
        raise ValueError(f"config.probe_vectors is {config.probe_vectors!r}; config.resid_config records "
                         f"{recorded}")


class SubnetworkProbe(nn.Module):
    """Subnetwork probing (Cao et al. 2021): a mask on a frozen model and a probe on one of its
    residual-stream vectors, trained together (NeuroSurgeon 0.1.0's ``SubnetworkProbe``).

    The module tree is 0.1.0's: ``wrapped_model`` is a :class:`ResidualUpdateModel` around a
    :class:`CircuitModel` around ``model``; ``probe`` is the classifier. With
    ``config.intermediate_size == -1`` a probe without masked layers is plain probing.

    Args:
        config: a :class:`SubnetworkProbeConfig`.
        model: the model to probe (masked in place), any family of
            :data:`neurosurgeon.ARCHITECTURES`; its ``config.hidden_size`` sizes the probe.
        architecture: an :class:`Architecture` (own templates) or row name, overriding
            ``config.resid_config.model_type``.

    Raises:
        ValueError / TypeError: a bad configuration, naming the field, its value and what is
            allowed; the model is left unchanged.
    """

    def __init__(self, config: SubnetworkProbeConfig, model: nn.Module, *, architecture=None):
        super().__init__()
        _check(config)
        plan_hooks(config.resid_config, model, architecture)  # before masking: a bad config changes nothing
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"model.config.hidden_size is {hidden!r}; the probe's input width must be an int")
        self.config = config
        self.hidden_size = hidden
        self.wrapped_model = ResidualUpdateModel(config.resid_config, CircuitModel(config.circuit_config, model),
                                                 architecture=architecture)
        width = config.intermediate_size
        self.probe = (nn.Sequential(nn.Linear(hidden, config.n_classes)) if width == -1 else
                      nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, config.n_classes)))
        self.loss = nn.CrossEntropyLoss()

    @property
    def circuit_model(self) -> CircuitModel:
        """The :class:`CircuitModel` holding the masks."""
        return self.wrapped_model.wrapped_model

    def _select(self, vectors: torch.Tensor, token_mask, labels):
        """The probed vectors ``(n, hidden)`` at ``token_mask`` and their labels ``(n,)`` (or None)."""
        rows = tuple(vectors.shape[:2])
        if token_mask is None:
            if self.config.labeling == "sequence":
                raise ValueError("token_mask is required with labeling='sequence': mark one token per example")
            token_mask = torch.ones(rows, dtype=torch.bool, device=vectors.device)
        if not isinstance(token_mask, torch.Tensor) or tuple(token_mask.shape) != rows:
            raise ValueError(f"token_mask must be a (batch, tokens) = {rows} tensor, got "
                             f"{tuple(getattr(token_mask, 'shape', ())) or type(token_mask).__name__}")
        token_mask = token_mask.to(vectors.device) != 0
        if self.config.labeling == "sequence":
            per_row = token_mask.sum(-1)
            if bool((per_row != 1).any()):
                raise ValueError(f"labeling='sequence' needs exactly one marked token per example; token_mask "
                                 f"marks {per_row.tolist()}")
        index = token_mask.reshape(-1).nonzero().squeeze(-1)
        selected = vectors.reshape(-1, vectors.shape[-1]).index_select(0, index)
        if labels is not None:
            if self.config.labeling == "token":
                labels = labels[labels != -1]  # -1 pads examples with fewer labelled tokens
            labels = labels.reshape(-1).to(vectors.device)
            if labels.numel() != index.numel():
                raise ValueError(f"labels has {labels.numel()} labels for {index.numel()} marked tokens "
                                 f"(labeling={self.config.labeling!r}); give one per marked token")
        return selected, labels

    def _vectors(self, forward, input_ids, inputs: dict) -> torch.Tensor:
        if input_ids is not None:
            inputs = {"input_ids": input_ids, **inputs}
        if not inputs:
            raise ValueError("no model inputs: give input_ids=..., or the model's own (pixel_values=..., ...)")
        forward(**inputs)
        return self.wrapped_model.vector_cache[self.config.probe_vectors]

    def forward(self, input_ids=None, labels=None, token_mask=None, return_dict=True, **kwargs):
        """Probe the marked vectors.

        Args:
            input_ids: token ids, or None for a model taking other inputs (``pixel_values``
                in ``kwargs``).
            labels: int classes: one per example (``labeling="sequence"``) or per marked token
                (``"token"``, ``-1`` pads); None: no loss.
            token_mask: bool ``(batch, tokens)``, the vectors to probe; with ``"sequence"``
                one per example (required); with ``"token"`` default every token.
            return_dict: a ``SequenceClassifierOutput`` (default), or transformers' tuple form
                ``(loss, logits)`` / ``(logits,)``.
            **kwargs: the model's other inputs (``attention_mask``, ``pixel_values``, ...).

        Returns:
            logits ``(n, n_classes)`` and, with labels, ``loss``: cross-entropy plus
            ``l0_lambda * L0`` of the masks while training with ``circuit_config.add_l0``.
            The dict form also holds the probed vectors (``hidden_states``) and ``labels``.
        """
        with soft_masks_for_l0():  # the L0 term sums the soft masks this forward made
            vectors = self._vectors(self.wrapped_model, input_ids, kwargs)
            selected, labels = self._select(vectors, token_mask, labels)
            logits = self.probe(selected)
            loss = None
            if labels is not None:
                loss = self.loss(logits, labels)
                circuit = self.circuit_model.config
                if self.training and circuit.add_l0:
                    loss = loss + circuit.l0_lambda * self.circuit_model.l0_penalty().to(loss.device)
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=selected)
        output.labels = labels
        return output

    @torch.no_grad()
    def evaluate_baselines(self, keys: torch.Tensor, *, labels: torch.Tensor, token_mask=None,
                           ablation: str = "randomly_sampled", chunk_size: int | None = None,
                           input_ids=None, **inputs) -> torch.Tensor:
        """Probe accuracy on K random subnetworks, one per key, in one vmapped pass.

        With the default ``randomly_sampled``, each key draws a subnetwork keeping as many
        units per layer as the trained mask, uniformly at random; the probe's accuracy on
        these is the chance level its own subnetwork's accuracy is compared with. Runs
        :func:`neurosurgeon.evaluate_baselines` on the hard masks in eval mode; the modes
        and ``vector_cache`` are restored afterwards.

        Args:
            keys: int64 ``(K, 2)``, e.g. ``neurosurgeon.functional.random.split(key(0), K)``.
            labels: as in :meth:`forward`.
            token_mask: as in :meth:`forward`.
            ablation: any ablation; ``complement_sampled`` draws outside the subnetwork.
            chunk_size: at most this many keys at once (bounds memory).
            input_ids, **inputs: the model's inputs, as in :meth:`forward`.

        Returns:
            float ``(K,)``: the fraction of marked tokens classified correctly, per key.
        """
        if labels is None:
            raise ValueError("labels is None; accuracy needs labels")
        cache = self.wrapped_model.vector_cache
        saved = dict(cache)

        def accuracy(forward):
            vectors = self._vectors(forward, input_ids, inputs)
            cache.pop(self.config.probe_vectors)  # holds a vmapped tensor: never let it out
            selected, y = self._select(vectors, token_mask, labels)
            return (self.probe(selected).argmax(-1) == y).float().mean()

        try:
            return baselines.evaluate_baselines(self.circuit_model.wrapped_model, accuracy, keys, ablation=ablation,
                                                chunk_size=chunk_size)
        finally:
            cache.clear()
            cache.update(saved)
