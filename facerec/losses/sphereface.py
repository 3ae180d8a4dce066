"""SphereFace / A-Softmax (Liu, Wen, Yu, Li, Raj, Song 2017, "SphereFace: Deep Hypersphere
Embedding for Face Recognition", Eq. 7): target ``psi(theta) = (-1)^k cos(m theta) - 2k`` for
``theta in [k pi/m, (k+1) pi/m]``, with the paper's annealed mix with plain softmax
(Appendix / reference Caffe ``MarginInnerProduct`` layer):

    f_y = (lambda cos theta + psi(theta)) / (1 + lambda),
    lambda = max(lambda_min, lambda_base * (1 + gamma * iteration) ** -power)

Feature scale: the paper multiplies by ``||x||``. Embedder outputs are unit-norm, so that
would cap every logit at 1 and the loss could not train; this implementation uses normalised
features with a fixed scale ``s`` instead, as NormFace/CosFace/ArcFace do (and as the authors'
"SphereFace Revived", Liu et al. 2022, does). Class weights are normalised with zero bias, as in
the paper.
"""

from __future__ import annotations

import torch

from facerec.losses.base import LOSSES, CosineMarginLoss, check, is_number


def chebyshev(cos_theta: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m theta)`` as the Chebyshev polynomial ``T_m(cos theta)``: a polynomial in the
    cosine, so its gradient is finite at theta = 0 and pi (``acos`` is not)."""
    prev, cur = torch.ones_like(cos_theta), cos_theta
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * cos_theta * cur - prev
    return cur


@LOSSES.register("sphereface")
class SphereFaceLoss(CosineMarginLoss):
    """``margin``: the integer m (paper: 4). ``lambda_base=1000, gamma=0.12, power=1,
    lambda_min=5`` are the reference code's schedule. ``iteration`` is a buffer (saved with
    the loss's state) advanced by each forward pass in training mode."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: int = 4,
        scale: float = 30.0,
        lambda_base: float = 1000.0,
        lambda_min: float = 5.0,
        gamma: float = 0.12,
        power: float = 1.0,
    ):
        super().__init__(embedding_dim, num_classes, scale=scale)
        check("margin", margin, isinstance(margin, int) and not isinstance(margin, bool) and margin >= 1,
              "an integer >= 1 (multiplicative angular margin m, paper: 4)")
        check("lambda_base", lambda_base, is_number(lambda_base) and lambda_base >= 0, "a number >= 0")
        check("lambda_min", lambda_min, is_number(lambda_min) and 0 <= lambda_min <= lambda_base,
              f"a number in [0, lambda_base={lambda_base}]")
        check("gamma", gamma, is_number(gamma) and gamma >= 0, "a number >= 0")
        check("power", power, is_number(power) and power >= 0, "a number >= 0")
        self.margin = margin
        self.lambda_base, self.lambda_min = float(lambda_base), float(lambda_min)
        self.gamma, self.power = float(gamma), float(power)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        it = int(self.iteration)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.gamma * it) ** (-self.power))

    def psi(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """``(-1)^k cos(m theta) - 2k``, monotonically decreasing from 1 to ``1 - 2m`` on [0, pi]."""
        with torch.no_grad():  # k is piecewise constant in theta
            theta = torch.acos(cos_theta.clamp(-1.0, 1.0))
            k = torch.floor(self.margin * theta / torch.pi).clamp(0, self.margin - 1)
            sign = 1.0 - 2.0 * torch.remainder(k, 2)
        return sign * chebyshev(cos_theta, self.margin) - 2.0 * k

    def modify_target_cos(self, cos_theta: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda()
        return (lam * cos_theta + self.psi(cos_theta)) / (1.0 + lam)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = super().forward(embeddings, labels)
        if self.training:
            self.iteration += 1
        return loss
