from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread: on a small shared CPU, torch's spinning worker threads make these
    tiny forward/backward passes 10-50x slower under contention, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
