"""The backbone registry :data:`BACKBONES` and its entry :class:`BackboneSpec`, apart from the
networks: the torchvision trunks (:mod:`facerec.models.backbones`) and dlib's ResNet
(:mod:`facerec.models.dlib_resnet`) register into it, and ``backbones`` imports ``dlib_resnet``,
so neither has to import the other's module to reach the registry (no import cycle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from facerec.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import os

    from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    ``build`` returns the full torchvision classifier (so that torchvision's own ImageNet state
    dicts load into it unchanged); ``trunk`` cuts the convolutional part out of it, whose output
    is ``N x channels x h x w``. ``seed_trainable`` lists the trunk submodules (dotted names,
    relative to the trunk) that train under ``freeze="seed"``; everything else in the trunk is
    frozen. ``classifier_prefixes`` are the keys of the ImageNet classifier, which a weights file
    may omit.
    """

    name: str
    channels: int
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Module]
    weights_enum: type | None
    seed_trainable: tuple[str, ...]
    classifier_prefixes: tuple[str, ...]
    # The input the network was (pre)trained on: a facerec.data.inputs.INPUT_KINDS name and size.
    input_kind: str = "haar_crop"
    default_image_size: int = 218
    # None: the trunk's feature map goes through EmbeddingHead (pool + projection + L2). Otherwise
    # a function(embedding_dim) -> head for networks that end in their own embedding layer.
    make_head: Callable[[int], nn.Module] | None = None
    # function(full model, weights path or None) -> init label; None: torchvision ImageNet weights.
    load_weights: Callable[[nn.Module, "str | os.PathLike | None"], str] | None = None
    # Embedding dimensions the network can give (None: any, through EmbeddingHead).
    fixed_embedding_dim: int | None = None
    describe_weights: str = "ImageNet (torchvision)"


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
