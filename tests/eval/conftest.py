"""The eval tests' test process runs torch on one thread (their crops, checkpoints and Ray cluster
are the fixtures of tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread in the test process: the machine is small and shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
