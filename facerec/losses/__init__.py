"""Metric-learning losses: triplet (online mining or fixed triplets) and the softmax family
(softmax, NormFace, SphereFace, CosFace, ArcFace). Build them by name with :func:`build_loss`."""

from __future__ import annotations

import inspect

from torch import nn

from facerec.errors import ConfigError
from facerec.losses.arcface import ArcFaceLoss
from facerec.losses.base import LOSSES, CosineMarginLoss, EmbeddingLoss
from facerec.losses.cosface import CosFaceLoss
from facerec.losses.normface import NormFaceLoss
from facerec.losses.softmax import SoftmaxLoss
from facerec.losses.sphereface import SphereFaceLoss
from facerec.losses.triplet import MINERS, TripletLoss


def loss_params(name: str) -> dict[str, object]:
    """The tunable parameters of loss ``name`` and their defaults."""
    sig = inspect.signature(LOSSES.get(name).__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "embedding_dim", "num_classes") and p.kind is not p.VAR_KEYWORD
    }


def build_loss(name: str, embedding_dim: int, num_classes: int | None = None, **params) -> nn.Module:
    """Instantiate the loss registered as ``name``; ``params`` are its keyword parameters
    (see :func:`loss_params`). An unknown parameter is a ConfigError naming it."""
    allowed = loss_params(name)
    for key, value in params.items():
        if key not in allowed:
            raise ConfigError(f"{name}.{key}", value, f"a parameter of the {name} loss: one of {sorted(allowed)}")
    cls = LOSSES.get(name)
    return cls(embedding_dim, num_classes, **params)


__all__ = [
    "LOSSES",
    "MINERS",
    "ArcFaceLoss",
    "CosFaceLoss",
    "CosineMarginLoss",
    "EmbeddingLoss",
    "NormFaceLoss",
    "SoftmaxLoss",
    "SphereFaceLoss",
    "TripletLoss",
    "build_loss",
    "loss_params",
]
