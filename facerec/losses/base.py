"""Loss registry and the two base classes every loss derives from.

:class:`EmbeddingLoss` fixes the constructor and call convention (``loss(embeddings, labels)``
returning a scalar). :class:`CosineMarginLoss` is the large-margin softmax family in the form of
pytorch-metric-learning's ``LargeMarginSoftmaxLoss``: logits are cosines between L2-normalised
features and L2-normalised class weights, the target-class cosine goes through
:meth:`CosineMarginLoss.modify_target_cos`, and everything is multiplied by a scale ``s``:

    L = -1/N sum_i log( e^{s psi(cos theta_{y_i})} / (e^{s psi(cos theta_{y_i})} + sum_{j != y_i} e^{s cos theta_j}) )

With ``psi`` the identity this is NormFace (Wang et al. 2017, "NormFace: L2 Hypersphere
Embedding for Face Verification", Eq. 8); CosFace, ArcFace and SphereFace only override ``psi``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facerec.errors import ConfigError
from facerec.registry import Registry

LOSSES: Registry[type["EmbeddingLoss"]] = Registry("loss")


def check(field: str, value, ok: bool, expected: str) -> None:
    """Raise ConfigError(field, value, expected) unless ``ok``."""
    if not ok:
        raise ConfigError(field, value, expected)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class EmbeddingLoss(nn.Module):
    """Base of all losses: ``forward(embeddings (N x d), labels (N,) int) -> scalar``.

    ``needs_classes``: the loss owns a ``num_classes x d`` classifier whose parameters must be
    given to the optimizer, and labels must be contiguous class indices ``0..num_classes-1``.
    """

    needs_classes: bool = False

    def __init__(self, embedding_dim: int | None, num_classes: int | None = None):
        super().__init__()
        if embedding_dim is not None or self.needs_classes:
            check("embedding_dim", embedding_dim, isinstance(embedding_dim, int) and not isinstance(embedding_dim, bool)
                  and embedding_dim >= 1, "a positive integer (the embedder's output dimension)")
        if self.needs_classes:
            check("num_classes", num_classes, isinstance(num_classes, int) and not isinstance(num_classes, bool)
                  and num_classes >= 2, f"an integer >= 2 (number of training identities): {type(self).__name__} "
                  "is a classifier loss")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Shape/range checks with messages saying what was received and what is expected."""
        if embeddings.dim() != 2 or (self.embedding_dim is not None and embeddings.shape[1] != self.embedding_dim):
            raise ConfigError("embeddings", f"tensor of shape {tuple(embeddings.shape)}",
                              f"N x {self.embedding_dim or 'd'} (the loss was built with embedding_dim={self.embedding_dim})")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0] or labels.dtype.is_floating_point:
            raise ConfigError("labels", f"{labels.dtype} tensor of shape {tuple(labels.shape)}",
                              f"an integer tensor of shape ({embeddings.shape[0]},), one label per embedding")
        if self.needs_classes and labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ConfigError("labels", f"class indices in [{lo}, {hi}]",
                                  f"indices in [0, {self.num_classes}); map identities to contiguous indices "
                                  "over the training split and build the loss with num_classes = their count")


def _unit_rows(centres: torch.Tensor, num_classes: int, dim: int) -> torch.Tensor:
    centres = torch.as_tensor(centres, dtype=torch.float32)
    if tuple(centres.shape) != (num_classes, dim):
        raise ConfigError("centres", tuple(centres.shape), f"a ({num_classes}, {dim}) tensor: one centre per class")
    return F.normalize(centres, dim=1)


class CosineMarginLoss(EmbeddingLoss):
    """Normalised-softmax base: ``logits = s * cos theta`` with the target cosine passed
    through :meth:`modify_target_cos`. Class weights ``weight`` have shape ``num_classes x d``
    (the transpose of pytorch-metric-learning's ``W``)."""

    needs_classes = True

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float):
        super().__init__(embedding_dim, num_classes)
        check("scale", scale, is_number(scale) and scale > 0, "a positive number (logit scale s, e.g. 16-64)")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight)

    @torch.no_grad()
    def imprint(self, centres: torch.Tensor) -> None:
        """Start the class weights at the classes' mean embeddings ("imprinted weights", Qi, Brown
        & Lowe, CVPR 2018): fine-tuning a pretrained embedder then starts from a low loss instead
        of random centres, whose large early gradients can collapse the pretrained embedding."""
        self.weight.copy_(_unit_rows(centres, self.weight.shape[0], self.weight.shape[1]).to(self.weight))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: margins are applied to cosines within 1e-3 of each other
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            w = F.normalize(self.weight.float(), dim=1)
            cos = F.linear(F.normalize(embeddings.float(), dim=1), w)
        return cos.clamp(-1.0, 1.0)

    def modify_target_cos(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """psi(cos theta) for the target class, in cosine units (before scaling). Identity here."""
        return cos_theta

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free class logits ``s * cos theta`` (for accuracy on held-out batches)."""
        return self.scale * self.cosine(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(embeddings, labels)
        cos = self.cosine(embeddings)
        index = labels.long().unsqueeze(1)
        target = self.modify_target_cos(cos.gather(1, index).squeeze(1))
        logits = cos.scatter(1, index, target.unsqueeze(1).to(cos.dtype))
        return F.cross_entropy(self.scale * logits, labels.long())
