"""Fixtures of the embedding / tables / LFW tests: a tiny crops folder written directly in the
preprocess layout (no Haar pass needed), a small checkpoint, the same forward pass done in
process for reference, and a 2-CPU Ray cluster per test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CROP = 32            # crop side of the tiny folder
IMAGE_SIZE = 32      # model input
EMBED_DIM = 16
N_IDS, PER_ID = 8, 4
DATA_VERSION = "tinycrops-v1"
SPLIT = {"mode": "random", "val_fraction": 0.25, "test_fraction": 0.5, "seed": 0}


def write_crops(root: Path, n_ids: int = N_IDS, per_id: int = PER_ID, seed: int = 0,
                data_version: str = DATA_VERSION) -> Path:
    """``root/crops.parquet`` + ``root/crops/*.jpg``: identity i has its own colour pattern,
    each image a little noise and shift, and random -1/1 attributes."""
    from facerec.data.images import encode_jpeg
    from facerec.data.schema import ATTRIBUTE_NAMES
    from facerec.io import atomic_write_parquet

    rng = np.random.default_rng(seed)
    (root / "crops").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:CROP, 0:CROP] / CROP
    rows = []
    n = 0
    for ident in range(1, n_ids + 1):
        base = rng.uniform(0, 255, size=3)
        freq = rng.uniform(1, 6, size=2)
        for _ in range(per_id):
            n += 1
            phase = rng.uniform(0, 0.3)
            pattern = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy + phase))
            img = base[None, None, :] * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 8, size=(CROP, CROP, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            name = f"{n:06d}.jpg"
            (root / "crops" / name).write_bytes(encode_jpeg(img, 95))
            row = {"image_id": name, "identity": ident, "partition": -1, "crop_path": f"crops/{name}",
                   "box_x": 0, "box_y": 0, "box_w": CROP, "box_h": CROP, "haar_pass": 1, "orig_w": CROP, "orig_h": CROP}
            row.update({a: int(v) for a, v in zip(ATTRIBUTE_NAMES, rng.choice([-1, 1], size=len(ATTRIBUTE_NAMES)))})
            rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("box_x", "box_y", "box_w", "box_h", "orig_w", "orig_h"):
        df[c] = df[c].astype(np.int32)
    for c in ("partition", "haar_pass") + tuple(ATTRIBUTE_NAMES):
        df[c] = df[c].astype(np.int8)
    df["identity"] = df["identity"].astype(np.int64)
    atomic_write_parquet(root / "crops.parquet", df, metadata={
        "data_version": data_version, "crop_size": CROP, "margin": 0.2, "attribute_names": list(ATTRIBUTE_NAMES)})
    return root


def make_checkpoint(folder: Path, crops_dir: Path, backbone: str = "resnet18", seed: int = 0,
                    data_version: str = DATA_VERSION, **extra) -> dict:
    """An untrained ``backbone`` whose batch norms are re-estimated on the crops (so faces get
    distinct embeddings instead of one collapsed direction), saved as a checkpoint."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.schema import load_crops
    from facerec.models import build_embedder, save_checkpoint
    from facerec.serve.defaults import recalibrate_batchnorm

    df, _ = load_crops(crops_dir)
    torch.manual_seed(seed)
    model = build_embedder(backbone, EMBED_DIM, freeze="none", pretrained=False)
    recalibrate_batchnorm(model, [read_image(crops_dir / p) for p in df["crop_path"]], IMAGE_SIZE)
    meta = {"image_size": IMAGE_SIZE, "data_version": data_version, "loss": "triplet", "epoch": 1, "split": SPLIT,
            "val_map_at_r": 0.5, "trial": f"{backbone}-test"}
    meta.update(extra)
    return save_checkpoint(folder, model.eval(), meta)


def reference_embeddings(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """The same model applied in this process, one image at a time (no Ray, no batching)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    tf = test_transform(int(meta["image_size"]))
    with torch.inference_mode():
        return np.concatenate([model(tf(read_image(p))[None]).numpy() for p in paths]).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_crops(tmp_path_factory) -> Path:
    return write_crops(tmp_path_factory.mktemp("tinycrops"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_crops, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "resnet18-best"
    make_checkpoint(folder, tiny_crops)
    return folder


@pytest.fixture(scope="module")
def ray_local():
    """A local 2-CPU Ray cluster for the module, shut down after it."""
    import ray

    if ray.is_initialized():  # left over by another module: start from a known cluster
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (importlib mode has no conftest imports)."""
    import types

    return types.SimpleNamespace(write_crops=write_crops, make_checkpoint=make_checkpoint,
                                 reference_embeddings=reference_embeddings, DATA_VERSION=DATA_VERSION, SPLIT=SPLIT,
                                 IMAGE_SIZE=IMAGE_SIZE, EMBED_DIM=EMBED_DIM)
