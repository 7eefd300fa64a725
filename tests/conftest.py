"""Shared test configuration: a bounded hypothesis profile, CUDA skips, a clean dynamo cache, and
the mask-layer factory fixture."""

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch, so one test's recompilations never exhaust another's limit."""
    torch._dynamo.reset()
    yield


@pytest.fixture(scope="session")
def make_layer():
    """The mask-layer factory: ``make_layer(strategy, kind, *, mask_unit=None, mask_bias=False,
    dtype=torch.float32, key=0, seed=0, subnetwork=True, **constructor_kwargs)``
    (see ``_modules_zoo.make_layer``)."""
    from _modules_zoo import make_layer as factory  # imported here: only the layer tests need it

    return factory
