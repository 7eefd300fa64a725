"""Every ```python block of README.md and docs/*.md runs as written.

Each block is one test case (id ``FILE:N``, the N-th python block of FILE, counted from 1). It
runs in a fresh namespace, with a temporary directory as the working directory and the Hugging
Face hub offline, so a block may write files but must build everything it uses itself. Blocks
that only illustrate (shell commands, outputs, file formats) use another fence language.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An opening fence of exactly ``python`` at the start of a line, up to the closing fence.
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _blocks():
    cases = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for n, match in enumerate(_BLOCK.finditer(text), start=1):
            first_line = text.count("\n", 0, match.start(1))  # 0-based line of the block's first line
            name = path.relative_to(ROOT).as_posix()
            cases.append(pytest.param(path, first_line, match.group(1), id=f"{name}:{n}"))
    return cases


BLOCKS = _blocks()


def test_the_docs_have_python_blocks():
    names = {case.id.split(":")[0] for case in BLOCKS}
    assert "README.md" in names and "docs/porting.md" in names


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary working directory, the hub offline, and torch's global settings restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    rng = torch.get_rng_state()
    yield tmp_path
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.set_rng_state(rng)


@pytest.mark.parametrize(("path", "first_line", "code"), BLOCKS)
def test_doc_block_runs(path, first_line, code, sandbox):
    # Pad with blank lines so a traceback names the line of the markdown file.
    source = "\n" * first_line + code
    exec(compile(source, str(path), "exec"), {"__name__": "__docs__"})
