"""The documentation runs: module docstring examples, the README's quick start and its whole-model example."""

import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

import neurosurgeon.model as model_pkg
import neurosurgeon.functional as functional_pkg
import neurosurgeon.modules as modules_pkg

DOC = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


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
    assert {"magnitude", "masking", "random", "cache", "fused", "baselines", "inject"} <= with_examples


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _section("Quick start"), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__docs__"})


def test_readme_whole_model_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _section("Masking a whole model"), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__docs__"})
    assert (tmp_path / "masks.safetensors").exists()


def test_every_public_name_has_a_docstring():
    for name in model_pkg.__all__:
        obj = getattr(model_pkg, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
