"""Tiny crops folders generated on the fly (no shared data): a few identities, each a distinct
colour pattern with per-image jitter, written in the crops-folder schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facerec.data.schema import ATTRIBUTE_NAMES, CROPS_TABLE
from facerec.io import atomic_write_parquet


def make_crops(root: Path, n_identities: int = 12, per_identity: int = 6, size: int = 40, seed: int = 0,
               input_kind: str = "haar_crop") -> Path:
    """Write ``root/crops/*.jpg`` + ``root/crops.parquet``. Identity i is a two-colour stripe
    pattern at its own angle; images of one identity differ by noise and a small shift."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for ident in range(n_identities):
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = np.pi * ident / n_identities
        freq = 0.15 + 0.05 * (ident % 3)
        for j in range(per_identity):
            dx, dy = rng.integers(-3, 4, 2)
            phase = np.sin(freq * ((xx + dx) * np.cos(angle) + (yy + dy) * np.sin(angle)))
            w = ((phase + 1) / 2)[..., None]
            img = (w * c1 + (1 - w) * c2 + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)
            image_id = f"{ident * 100 + j + 1:06d}.jpg"
            cv2.imwrite(str(root / "crops" / image_id), img[:, :, ::-1])
            row = {"image_id": image_id, "identity": 1000 + ident, "partition": 0, "crop_path": f"crops/{image_id}",
                   "box_x": 0, "box_y": 0, "box_w": size, "box_h": size, "haar_pass": 1, "orig_w": size,
                   "orig_h": size}
            row.update({a: np.int8(1 if rng.random() < 0.5 else -1) for a in ATTRIBUTE_NAMES})
            rows.append(row)
    df = pd.DataFrame(rows).astype({"partition": np.int8, "haar_pass": np.int8})
    atomic_write_parquet(root / CROPS_TABLE, df, metadata={"data_version": f"tiny-{seed}", "crop_size": size,
                                                           "margin": 0.2, "attribute_names": list(ATTRIBUTE_NAMES),
                                                           "input_kind": input_kind})
    return root


@pytest.fixture(scope="session")
def tiny_crops(tmp_path_factory) -> Path:
    return make_crops(tmp_path_factory.mktemp("tiny-crops"))


@pytest.fixture(scope="session")
def tiny_chips(tmp_path_factory) -> Path:
    """The same patterns at dlib's chip size, declared as aligned chips (what dlib_resnet reads)."""
    return make_crops(tmp_path_factory.mktemp("tiny-chips"), n_identities=8, per_identity=5, size=150,
                      input_kind="aligned_chip_5pt")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the module's tests; shut down afterwards."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()
