"""neurosurgeon: find, test and remove subnetworks of trained networks with differentiable masks.

- :mod:`neurosurgeon.functional`: pure mask functions with explicit PRNG keys.
- :mod:`neurosurgeon.modules`: ``nn.Module`` shells with NeuroSurgeon 0.1.0's class names.
"""

from . import functional
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _module_names

__version__ = "0.2.0"
__all__ = ["functional", *_module_names]
from .model import *  # noqa: F401,F403,E402  (whole-model surgery, issue 3)
from .model import __all__ as _model_names  # noqa: E402

__all__ = [*__all__, *_model_names]
