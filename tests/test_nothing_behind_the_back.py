"""The library starts no process or thread, compiles nothing, and a fresh process's first masked
calls do not import the compiler (``torch._dynamo``, a slow import the user did not ask for)."""

import ast
import pathlib
import subprocess
import sys

import pytest

import neurosurgeon

PACKAGE = pathlib.Path(neurosurgeon.__file__).parent

FIRST_CALLS = r"""
import sys, threading, torch, torch.nn as nn, neurosurgeon as ns
from neurosurgeon.functional import random as nr
torch.manual_seed(0)
x = torch.randn(8, 32)
threads = threading.active_count()
# a sampled-ablation forward
layer = ns.ContSparseLinear.from_layer(nn.Linear(32, 64), mask_init_value=-1.0, key=0).eval()
layer.ablation = "complement_sampled"
with torch.no_grad():
    layer(x)
# hard-concrete training steps
hc = ns.HardConcreteLinear.from_layer(nn.Linear(32, 64).requires_grad_(False), key=1).train()
for _ in range(3):
    (hc(x).square().mean() + 1e-3 * hc.calculate_l0()).backward()
# vmapped baselines through a model
net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
ns.inject_masks(net, nn.Linear, key=0, mask_init_value=-1.0)
ns.evaluate_baselines(net, lambda f: f(x).sum(), nr.split(nr.key(1), 3), ablation="randomly_sampled")
print("dynamo" if "torch._dynamo" in sys.modules else "no-dynamo", threading.active_count() - threads)
"""


def test_first_masked_calls_in_a_fresh_process_import_no_compiler_and_start_no_thread():
    out = subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["no-dynamo", "0"]


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _calls(path: pathlib.Path) -> set[str]:
    return {ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_of_the_package_starts_processes_threads_or_compilations(path):
    spawning = {"subprocess", "threading", "multiprocessing", "concurrent.futures", "_thread", "torch.multiprocessing"}
    assert not (_imported_modules(path) & spawning)
    assert not {c for c in _calls(path) if c in ("torch.compile", "compile") or c.endswith(".spawn")}
