"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: the tensors and models in the tests are
    tiny, and on a 2-core machine (more so a busy one) extra threads only add contention.
    Subprocesses (notebook kernels, torch.distributed workers) set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
