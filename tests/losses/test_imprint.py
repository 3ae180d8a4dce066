"""Imprinted class weights (Qi, Brown & Lowe 2018): each centre starts at its class's mean embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facerec.errors import ConfigError
from facerec.losses import build_loss


@pytest.mark.parametrize("name", ["softmax", "normface", "sphereface", "cosface", "arcface"])
def test_imprinting_points_each_class_at_its_mean(name):
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(5, 8), dim=1)
    emb = F.normalize(centres.repeat_interleave(3, 0) + 0.05 * torch.randn(15, 8), dim=1)
    labels = torch.arange(5).repeat_interleave(3)
    loss = build_loss(name, 8, 5)
    before = float(loss(emb, labels))
    loss.imprint(3.0 * centres)  # any length: only the direction is kept
    after = float(loss(emb, labels))
    assert after < before
    # every embedding's nearest class weight is now its own class
    w = loss.classifier.weight if name == "softmax" else loss.weight
    assert torch.equal((emb @ F.normalize(w, dim=1).T).argmax(1), labels)
    torch.testing.assert_close(F.normalize(w, dim=1), centres)
    if name == "softmax":
        assert torch.count_nonzero(loss.classifier.bias) == 0


def test_imprinting_needs_one_centre_per_class():
    loss = build_loss("arcface", 8, 5)
    with pytest.raises(ConfigError, match=r"^centres=\(4, 8\) is invalid: expected a \(5, 8\) tensor"):
        loss.imprint(torch.ones(4, 8))
    assert not hasattr(build_loss("triplet", 8, 5), "imprint")
