"""Shared test settings."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run and every machine (the suite must be
# deterministic). To search afresh:  HYPOTHESIS_PROFILE=explore python -m pytest -q
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: the tensors and models in the tests are
    tiny, and on a 2-core machine (more so a busy one) extra threads only add contention.
    Subprocesses (notebook kernels, torch.distributed workers) set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
