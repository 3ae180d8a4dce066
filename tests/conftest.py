from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("FACEREC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (celeba-sample, lfw-sample); skips with the reason when absent."""
    if not (SHARED / "celeba-sample" / "identity_CelebA.txt").is_file():
        pytest.skip(f"real data not found at {SHARED} (a clone without ../shared/data); set FACEREC_SHARED to its parent")
    return SHARED
