"""Backbone + embedding head, the model every training trial produces and serving loads."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from facerec.errors import ConfigError
from facerec.models.backbones import BACKBONES, FREEZE_POLICIES, apply_freeze, load_pretrained
from facerec.models.head import EmbeddingHead


class Embedder(nn.Module):
    """Maps ``N x 3 x H x W`` inputs of the backbone's input kind (``facerec.data.inputs``) to
    ``N x d`` embeddings: unit-norm through :class:`EmbeddingHead`, or the network's own descriptor
    (``dlib_resnet``: dlib's, not normalised). Distances are Euclidean either way.

    ``metadata`` is ``{"backbone", "embedding_dim", "freeze", "init", "input_kind", "image_size"}``;
    ``init`` is ``"imagenet"``, ``"random"``, ``"dlib"`` or the weights path the trunk was
    initialised from.

    Batch-norm layers whose parameters are all frozen stay in eval mode after ``train()``: their
    running statistics are the pretrained ones and updating them from small face batches
    would shift the features the frozen convolutions were fitted to.
    """

    def __init__(self, backbone: nn.Module, head: EmbeddingHead, metadata: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.metadata = dict(metadata)

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> "Embedder":
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self


def build_embedder(
    backbone: str,
    embedding_dim: int = 128,
    freeze: str = "seed",
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
) -> Embedder:
    """Build a backbone from :data:`BACKBONES` with the embedding head and freezing policy.

    ``weights``: path of a torchvision ImageNet state dict for the backbone; if None and
    ``pretrained`` the torch hub cache is searched, never downloaded (random init with a warning
    on a miss). ``pretrained=False`` skips all of that (random init, ``init="random"``); used
    when a checkpoint will overwrite the weights anyway.
    """
    spec = BACKBONES.get(backbone)
    FREEZE_POLICIES.get(freeze)  # ConfigError naming the choices before building anything
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ConfigError("embedding_dim", embedding_dim, "a positive integer such as 128")
    if spec.fixed_embedding_dim is not None and embedding_dim != spec.fixed_embedding_dim:
        raise ConfigError("embedding_dim", embedding_dim,
                          f"{spec.fixed_embedding_dim}: {backbone} ends in its own {spec.fixed_embedding_dim}-d embedding layer")
    full = spec.build()
    init = load_pretrained(full, backbone, weights) if pretrained else "random"
    trunk = spec.trunk(full)
    apply_freeze(trunk, spec, freeze)
    head = spec.make_head(embedding_dim) if spec.make_head is not None else EmbeddingHead(spec.channels, embedding_dim)
    meta = {"backbone": backbone, "embedding_dim": embedding_dim, "freeze": freeze, "init": init,
            "input_kind": spec.input_kind}
    model = Embedder(trunk, head, meta)
    return model.train()  # applies the frozen-BN rule from the start
