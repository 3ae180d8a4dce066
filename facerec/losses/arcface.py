"""ArcFace / Additive Angular Margin (Deng, Guo, Xue, Zafeiriou 2019, "ArcFace: Additive
Angular Margin Loss for Deep Face Recognition", Eq. 3): target logit ``s * cos(theta + m)``."""

from __future__ import annotations

import math

import torch

from facerec.losses.base import LOSSES, CosineMarginLoss, check, is_number


@LOSSES.register("arcface")
class ArcFaceLoss(CosineMarginLoss):
    """Defaults s=64, m=0.5 from the paper.

    ``cos(theta + m) = cos theta cos m - sin theta sin m`` is computed from the cosine (no
    ``acos``, whose derivative is infinite at cos = +-1). ``cos(theta + m)`` stops decreasing
    once ``theta + m > pi``, so there, as in the insightface reference code, the target logit is
    ``cos theta - m sin(pi - m)`` instead (``phi = where(cos > cos(pi - m), phi, cos - mm)``),
    which keeps it monotone and continuous in theta. ``margin=0`` is exactly NormFace.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.5, scale: float = 64.0):
        super().__init__(embedding_dim, num_classes, scale=scale)
        check("margin", margin, is_number(margin) and 0 <= margin < math.pi / 2,
              "a number in [0, pi/2) (additive angular margin m in radians, paper: 0.5)")
        self.margin = float(margin)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def modify_target_cos(self, cos_theta: torch.Tensor) -> torch.Tensor:
        # clamp_min keeps sqrt's derivative finite at cos = +-1 exactly
        sin_theta = torch.sqrt((1.0 - cos_theta * cos_theta).clamp_min(1e-12))
        phi = cos_theta * self.cos_m - sin_theta * self.sin_m
        return torch.where(cos_theta > self.threshold, phi, cos_theta - self.fallback)
