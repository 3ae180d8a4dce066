"""Default models for a local run without a trained checkpoint.

A randomly initialised CNN in eval mode maps every face to almost the same unit vector: its
batch-norm layers hold the init statistics (mean 0, variance 1), so activations drift in scale
layer after layer and the final L2 normalisation sees one dominant direction. Re-estimating the
batch-norm statistics on the gallery crops (a forward pass in train mode, no gradient; the
"BN recalibration" of e.g. Li et al., "Revisiting Batch Normalization for Practical Domain
Adaptation", 2017) gives embeddings that differ from face to face, so retrieval returns visibly
different neighbours. They are not identity-discriminative like a trained model's; use
``facerec train`` checkpoints for that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from facerec.errors import ConfigError


def recalibrate_batchnorm(model, crops: list[np.ndarray], image_size: int, batch_size: int = 32) -> None:
    """Replace every batch-norm layer's running statistics by the cumulative mean/variance of
    the activations on ``crops`` (uint8 H x W x 3)."""
    import torch
    from torch import nn

    from facerec.data.transforms import test_transform

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not crops:
        return
    tf = test_transform(image_size)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.eval()
    for bn in bns:
        bn.train()
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            chunk = crops[start:start + batch_size]
            if len(chunk) < 2:  # batch-norm needs two samples to estimate a variance
                continue
            model(torch.stack([tf(c) for c in chunk]))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def make_default_checkpoint(
    backbone: str,
    out_dir: str | os.PathLike,
    crops_dir: str | os.PathLike,
    image_size: int = 128,
    embedding_dim: int = 128,
    seed: int = 0,
    max_calibration_images: int = 256,
) -> dict[str, Any]:
    """Build ``backbone`` (ImageNet weights if the torch hub cache has them, else random init),
    recalibrate its batch norms on crops of ``crops_dir`` and save it as a checkpoint folder.
    Returns the checkpoint metadata (with ``model_id``)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.schema import load_crops
    from facerec.models import build_embedder, save_checkpoint

    if not isinstance(image_size, int) or not 32 <= image_size <= 512:
        raise ConfigError("image_size", image_size, "an integer in [32, 512]")
    df, meta = load_crops(crops_dir)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(df))[:max_calibration_images]
    crops = [read_image(Path(crops_dir) / df["crop_path"].iloc[i]) for i in sorted(pick)]
    torch.manual_seed(seed)
    model = build_embedder(backbone, embedding_dim, freeze="none")
    recalibrate_batchnorm(model, crops, image_size)
    return save_checkpoint(out_dir, model, {
        "image_size": image_size,
        "data_version": meta.get("data_version"),
        "loss": "none (untrained; batch-norm recalibrated on the gallery)",
        "epoch": 0,
        "seed": seed,
    })
