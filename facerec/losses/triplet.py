"""Triplet loss with a margin on L2 distance (Schroff, Kalenichenko, Philbin 2015, "FaceNet: A
Unified Embedding for Face Recognition and Clustering", Eq. 1):

    L = mean over triplets of max(0, d(a, p) - d(a, n) + alpha)

``d`` is the Euclidean distance (``squared=True`` gives FaceNet's squared distance). Fixed
triplets go through :meth:`TripletLoss.forward_triplets`; ``forward(embeddings, labels)`` mines
triplets inside a P x K batch with one of :data:`MINERS`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from facerec.errors import ConfigError
from facerec.losses.base import LOSSES, EmbeddingLoss, check, is_number
from facerec.registry import Registry

_EPS = 1e-12  # sqrt is clamped away from 0 so identical embeddings give a zero, not NaN, gradient

Miner = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
MINERS: Registry[Miner] = Registry("triplet mining")
"""name -> function(distance matrix N x N, labels (N,), margin) -> scalar loss."""


def _distance(squared_distance: torch.Tensor, squared: bool) -> torch.Tensor:
    return squared_distance if squared else squared_distance.clamp_min(_EPS).sqrt()


def pairwise_distances(x: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """N x N Euclidean distances. Computed from differences rather than ``|a|^2 + |b|^2 - 2ab``,
    which loses the small distances that mining compares to float32 cancellation."""
    diff = x.unsqueeze(1) - x.unsqueeze(0)
    return _distance(diff.pow(2).sum(-1), squared)


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _zero(dist: torch.Tensor) -> torch.Tensor:
    return dist.sum() * 0.0  # keeps the graph so backward() works on a batch with no triplets


@MINERS.register("batch_all")
def batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Every valid (a, p, n) in the batch; the mean over triplets with positive loss (the
    "batch all" variant of Hermans, Beyer, Leibe 2017, "In Defense of the Triplet Loss for
    Person Re-Identification", Sec. 2; averaging only the non-zero terms keeps the gradient from
    vanishing as most triplets become easy)."""
    pos, neg = _masks(labels)
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)
    losses = F.relu(dist.unsqueeze(2) - dist.unsqueeze(1) + margin)[valid]
    active = losses > 0
    return losses[active].mean() if active.any() else _zero(dist)


@MINERS.register("batch_hard")
def batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Hermans et al. 2017, Eq. 5 ("batch hard"): for each anchor, its farthest positive and
    nearest negative; the mean over anchors that have both."""
    pos, neg = _masks(labels)
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return _zero(dist)
    hardest_pos = torch.where(pos, dist, torch.full_like(dist, -torch.inf)).amax(1)
    hardest_neg = torch.where(neg, dist, torch.full_like(dist, torch.inf)).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


@MINERS.register("semi_hard")
def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """FaceNet's online semi-hard mining (Schroff et al. 2015, Sec. 3.2, Eq. 4): every
    anchor-positive pair, each with the nearest negative that is still farther than the
    positive (``d(a,n) > d(a,p)``). As in TensorFlow's ``triplet_semihard_loss``, a pair with no
    such negative takes the farthest negative of its anchor instead. The mean over all
    anchor-positive pairs (of anchors that have a negative)."""
    pos, neg = _masks(labels)
    valid = pos & neg.any(1, keepdim=True)
    if not valid.any():
        return _zero(dist)
    d_ap = dist.unsqueeze(2)  # (a, p, 1)
    d_an = dist.unsqueeze(1)  # (a, 1, n)
    outside = neg.unsqueeze(1) & (d_an > d_ap)
    nearest_outside = torch.where(outside, d_an, torch.full_like(d_an, torch.inf)).amin(2)
    farthest = torch.where(neg, dist, torch.full_like(dist, -torch.inf)).amax(1, keepdim=True)
    chosen = torch.where(outside.any(2), nearest_outside, farthest)
    return F.relu(dist - chosen + margin)[valid].mean()


@LOSSES.register("triplet")
class TripletLoss(EmbeddingLoss):
    """``margin``: alpha (FaceNet: 0.2). ``mining``: a :data:`MINERS` name. ``squared``: use
    squared L2 distance as FaceNet Eq. 1 does (default: plain L2, as pytorch-metric-learning)."""

    needs_classes = False

    def __init__(
        self,
        embedding_dim: int | None = None,
        num_classes: int | None = None,
        *,
        margin: float = 0.2,
        mining: str = "batch_hard",
        squared: bool = False,
    ):
        super().__init__(embedding_dim, num_classes)
        check("margin", margin, is_number(margin) and margin >= 0, "a number >= 0 (triplet margin alpha, e.g. 0.2)")
        self.miner = MINERS.get(mining)
        check("squared", squared, isinstance(squared, bool), "True or False")
        self.margin, self.mining, self.squared = float(margin), mining, squared

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Online mining over a P x K batch: labels are identities (any integers)."""
        self.check_inputs(embeddings, labels)
        return self.miner(pairwise_distances(embeddings.float(), self.squared), labels, self.margin)

    def forward_triplets(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Fixed triplets (row i of each is one triplet): ``mean_i max(0, d(a_i,p_i) - d(a_i,n_i) + alpha)``."""
        if not (anchor.shape == positive.shape == negative.shape) or anchor.dim() != 2:
            raise ConfigError("anchor/positive/negative",
                              f"shapes {[tuple(t.shape) for t in (anchor, positive, negative)]}",
                              "three N x d tensors of the same shape")
        d_ap = _distance((anchor.float() - positive.float()).pow(2).sum(1), self.squared)
        d_an = _distance((anchor.float() - negative.float()).pow(2).sum(1), self.squared)
        return F.relu(d_ap - d_an + self.margin).mean()

