"""Fixtures of the comparisons with NeuroSurgeon 0.1.0."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors: waking intra-op threads would cost more than each op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
