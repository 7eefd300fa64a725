"""neurosurgeon: find, test and remove subnetworks of trained networks with differentiable masks.

- :mod:`neurosurgeon.functional`: pure mask functions with explicit PRNG keys.
- :mod:`neurosurgeon.modules`: ``nn.Module`` shells with NeuroSurgeon 0.1.0's class names.
- :mod:`neurosurgeon.model`: whole-model surgery (inject, train, analyse, bake, vmapped baselines).
- :mod:`neurosurgeon.compat`: state-dict conversion to and from NeuroSurgeon 0.1.0.
- :mod:`neurosurgeon.cli`: the ``neurosurgeon`` command.
"""

from . import compat, functional
from .model import *  # noqa: F401,F403
from .model import __all__ as _model_names
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _module_names
from . import circuits
from .circuits import CircuitMask, circuit_forward, circuit_graph, edge_attribution, patching_scores, train_circuit

__version__ = "0.2.0"
__all__ = ["functional", "compat", *_module_names, *_model_names, "circuits",
           "circuit_graph", "circuit_forward", "CircuitMask", "edge_attribution", "patching_scores", "train_circuit"]
