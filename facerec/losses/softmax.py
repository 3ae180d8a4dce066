"""Softmax cross-entropy over a linear classifier with bias: the identification baseline
(DeepFace, Taigman et al. 2014; DeepID, Sun et al. 2014) that NormFace and the margin losses
modify."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses.base import LOSSES, EmbeddingLoss


@LOSSES.register("softmax")
class SoftmaxLoss(EmbeddingLoss):
    """``CE(W x + b, y)`` with ``classifier = nn.Linear(embedding_dim, num_classes)``."""

    needs_classes = True

    def __init__(self, embedding_dim: int, num_classes: int):
        super().__init__(embedding_dim, num_classes)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=True)

    # Logit scale of imprinted weights: unit embeddings give logits in [-10, 10], a confident but
    # not saturated start (the cosine losses use their own scale s).
    IMPRINT_SCALE = 10.0

    @torch.no_grad()
    def imprint(self, centres: torch.Tensor) -> None:
        """Class weights = ``IMPRINT_SCALE`` x the unit class means, bias 0 (Qi et al., CVPR 2018)."""
        from facerec.losses.base import _unit_rows

        w = self.classifier.weight
        w.copy_(self.IMPRINT_SCALE * _unit_rows(centres, w.shape[0], w.shape[1]).to(w))
        self.classifier.bias.zero_()

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.classifier(embeddings.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(embeddings, labels)
        return F.cross_entropy(self.logits(embeddings), labels.long())
