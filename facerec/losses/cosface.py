"""CosFace / Large Margin Cosine Loss (Wang et al. 2018, "CosFace: Large Margin Cosine Loss for
Deep Face Recognition", Eq. 4): target logit ``s * (cos theta - m)``."""

from __future__ import annotations

import torch

from facerec.losses.base import LOSSES, CosineMarginLoss, check, is_number


@LOSSES.register("cosface")
class CosFaceLoss(CosineMarginLoss):
    """Defaults s=64, m=0.35 from the paper (Sec. 4.1). ``margin=0`` is exactly NormFace."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.35, scale: float = 64.0):
        super().__init__(embedding_dim, num_classes, scale=scale)
        check("margin", margin, is_number(margin) and 0 <= margin < 2, "a number in [0, 2) (additive cosine margin m)")
        self.margin = float(margin)

    def modify_target_cos(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return cos_theta - self.margin
