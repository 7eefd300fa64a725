"""Every docstring example runs, and the public names are documented (the markdown docs run in test_docs.py)."""

import doctest
import importlib
import pkgutil

import pytest

import neurosurgeon.model as model_pkg
import neurosurgeon.functional as functional_pkg
import neurosurgeon.modules as modules_pkg

# Every module of the three layers, so a new docstring example is run without listing it here.
MODULES = [importlib.import_module(f"{pkg.__name__}.{info.name}")
           for pkg in (functional_pkg, modules_pkg, model_pkg) for info in pkgutil.iter_modules(pkg.__path__)]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_documented_modules_have_examples():
    with_examples = {m.__name__.rsplit(".", 1)[1] for m in MODULES
                     if any(t.examples for t in doctest.DocTestFinder().find(m))}
    assert {"magnitude", "layer", "units", "random", "cache", "baselines", "inject", "architectures"} <= with_examples


def test_every_public_name_has_a_docstring():
    for name in model_pkg.__all__:
        obj = getattr(model_pkg, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
