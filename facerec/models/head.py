"""Embedding head: global average pooling and a two-layer projection onto the unit sphere.

The L2 normalisation follows FaceNet (Schroff et al. 2015, Sec. 3: ``||f(x)||_2 = 1``), so that
squared L2 distance between embeddings is ``2 - 2 cos``; the KD-tree index and every loss work
in that space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """``AdaptiveAvgPool2d(1) -> Flatten -> Linear(C, d) -> ReLU -> Linear(d, d) -> L2 normalise``."""

    def __init__(self, in_channels: int, embedding_dim: int = 128):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels, embedding_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(embedding_dim, embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.relu(self.fc1(self.flatten(self.pool(features)))))
        return F.normalize(x, p=2, dim=1)
