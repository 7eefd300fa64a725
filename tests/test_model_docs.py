"""The model-level documentation runs: module docstring examples and docs/model.md's example."""

import doctest
import pathlib
import re

import pytest

import neurosurgeon.model as model_pkg
from neurosurgeon.model import baselines, inject, l0, schedule

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "model.md"


@pytest.mark.parametrize("module", [inject, l0, schedule, baselines], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_docs_model_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__docs__"})
    assert (tmp_path / "masks.safetensors").exists()


def test_every_public_name_has_a_docstring():
    for name in model_pkg.__all__:
        obj = getattr(model_pkg, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
