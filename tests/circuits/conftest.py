"""Circuit tests run their tiny models on one thread: a second thread only adds synchronisation at
these sizes, and on a busy machine it costs many times the work."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
