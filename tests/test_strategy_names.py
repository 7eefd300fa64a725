"""Outside the functional core no code tells strategies apart by comparing their names: it reads
the strategy table's rows (``anneal``, ``init_hparam``, ``has_params``, ``needs_key``), so adding
a row is all a new strategy needs."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

from neurosurgeon.functional.strategies import STRATEGIES


def _string_constants(node: ast.AST) -> set[str]:
    """The string constants ``node`` is, or holds as a tuple/list/set display."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_string_constants(e) for e in node.elts)) if node.elts else set()
    return set()


def strategy_name_comparisons(source: str, names) -> list[tuple[int, str]]:
    """(line, strategy name) of every comparison (``==``, ``!=``, ``in``, ``not in``, ``is``)
    with a strategy name as an operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, s) for s in sorted(_string_constants(operand) & set(names))]
    return found


def test_the_checker_finds_each_form_of_comparison():
    source = ('if strategy == "hard_concrete": pass\nx = "continuous_sparsification" != m\n'
              'y = s in ("magnitude_pruning", "a")\nz = {"hard_concrete": 1}\nw = f(strategy="hard_concrete")\n')
    assert strategy_name_comparisons(source, STRATEGIES) == [
        (1, "hard_concrete"), (2, "continuous_sparsification"), (3, "magnitude_pruning")]


ROOT = pathlib.Path(importlib.util.find_spec("neurosurgeon").submodule_search_locations[0])
FILES = [p for p in sorted(ROOT.rglob("*.py")) if "functional" not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_outside_the_functional_core_compares_a_strategy_name(path):
    assert strategy_name_comparisons(path.read_text(encoding="utf-8"), STRATEGIES) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_outside_the_functional_core_reads_a_signature(path):
    """Hyper-parameters come from the strategy rows, never from reading a shell's signature."""
    calls = {ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call)}
    assert not {c for c in calls if c.split(".")[-1] in ("signature", "getfullargspec", "getargspec")}
