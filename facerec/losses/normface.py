"""NormFace (Wang, Xiang, Cheng, Yuille 2017, "NormFace: L2 Hypersphere Embedding for Face
Verification", Eq. 8): softmax over ``s * cos theta`` between normalised features and
normalised class weights, no bias, no margin."""

from __future__ import annotations

from facerec.losses.base import LOSSES, CosineMarginLoss


@LOSSES.register("normface")
class NormFaceLoss(CosineMarginLoss):
    """``scale``: s; the paper shows a fixed s is needed for normalised softmax to converge and
    bounds it from below by the number of classes (Sec. 3.3); 16 suits a few hundred to a few
    thousand identities. Same as pytorch-metric-learning's NormalizedSoftmaxLoss with
    ``temperature = 1/s``."""

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float = 16.0):
        super().__init__(embedding_dim, num_classes, scale=scale)
