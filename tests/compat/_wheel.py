"""Running NeuroSurgeon 0.1.0's own test files from its wheel against another implementation."""

import inspect
import pathlib
import re


def wheel_tests(package, filename: str, *, target: str = "neurosurgeon", stand_ins: dict | None = None) -> dict:
    """The namespace of ``filename`` from ``package``'s ``test/`` folder, executed as written but
    with its relative imports pointed at ``target`` and its ``transformers``/``datasets`` imports
    replaced by ``stand_ins`` (downloads become small local models and data)."""
    path = pathlib.Path(inspect.getfile(package)).parent / "test" / filename
    source = path.read_text()
    if stand_ins is not None:
        source = re.sub(r"^from transformers import \((.|\n)*?\)\n|^from transformers import .*\n", "", source, flags=re.M)
        source = source.replace("from datasets import load_dataset\n", "")
    source = re.sub(r"^from \.+[\w.]* import", f"from {target} import", source, flags=re.M)
    assert "from ." not in source and (target.startswith("NeuroSurgeon") or "NeuroSurgeon" not in source)
    namespace = dict(stand_ins or {})
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


def wheel_test_names(namespaces: dict) -> list:
    """``(filename, test name)`` of every test function in ``{filename: namespace}``."""
    return [(f, name) for f, ns in namespaces.items() for name in ns if name.startswith("test_")]
