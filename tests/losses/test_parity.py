"""Parity with pytorch-metric-learning where it implements the same loss with the same settings.

pml keeps class weights as ``W: embedding_size x num_classes`` (ours: ``weight: num_classes x d``,
so we copy ``weight.T``) and reduces classification losses by the batch mean (MeanReducer).
Its TripletMarginLoss (given un-normalised L2 distance, like ours) averages the triplets with non-zero loss (AvgNonZeroReducer), which is our
batch_all; batch_hard (Hermans et al.) averages over all anchors, so pml is given a MeanReducer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning (dev dependency) not installed")
from pytorch_metric_learning import distances, miners, reducers  # noqa: E402

from facerec.losses import build_loss  # noqa: E402

D, C, N = 8, 5, 24
# pml's LpDistance normalises embeddings by default; ours takes the embedder's (already unit-norm)
# output as is, so compare on the same raw L2 distance (same values, same gradients).
RAW_L2 = distances.LpDistance(normalize_embeddings=False, p=2, power=1)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(N, D, generator=g), dim=1)
    labels = torch.arange(N) % C  # every class present, 4-5 samples each
    return emb, labels


def _compare(ours, theirs, emb, labels):
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    l1, l2 = ours(e1, labels), theirs(e2, labels)
    l1.backward()
    l2.backward()
    assert l1.item() > 0
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)
    return l1


def _copy_weights(ours, theirs):
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)


@pytest.mark.parametrize("margin,scale", [(0.35, 64.0), (0.2, 16.0)])
def test_cosface(margin, scale):
    torch.manual_seed(0)
    ours = build_loss("cosface", D, C, margin=margin, scale=scale)
    theirs = pml_losses.CosFaceLoss(C, D, margin=margin, scale=scale)
    _copy_weights(ours, theirs)
    _compare(ours, theirs, *_batch())


@pytest.mark.parametrize("margin,scale", [(0.5, 64.0), (0.3, 30.0)])
def test_arcface(margin, scale):
    torch.manual_seed(0)
    ours = build_loss("arcface", D, C, margin=margin, scale=scale)
    theirs = pml_losses.ArcFaceLoss(C, D, margin=math.degrees(margin), scale=scale)  # pml takes degrees
    _copy_weights(ours, theirs)
    emb, labels = _batch()
    # include a sample on the fallback branch (theta + m > pi): opposite its class weight
    emb = emb.clone()
    emb[0] = -F.normalize(ours.weight[labels[0]].detach(), dim=0) + 0.05 * emb[0]
    emb[0] = F.normalize(emb[0], dim=0)
    theta0 = torch.acos((F.normalize(ours.weight[labels[0]].detach(), dim=0) @ emb[0]).clamp(-1, 1))
    assert theta0 > math.pi - margin
    _compare(ours, theirs, emb, labels)


@pytest.mark.parametrize("scale", [16.0, 20.0])
def test_normface(scale):
    torch.manual_seed(0)
    ours = build_loss("normface", D, C, scale=scale)
    theirs = pml_losses.NormalizedSoftmaxLoss(C, D, temperature=1.0 / scale)
    _copy_weights(ours, theirs)
    _compare(ours, theirs, *_batch())


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_triplet_batch_all(margin):
    ours = build_loss("triplet", D, None, margin=margin, mining="batch_all")
    theirs = pml_losses.TripletMarginLoss(margin=margin, distance=RAW_L2)  # all triplets, mean of non-zero
    _compare(ours, theirs, *_batch(1))


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_triplet_batch_hard(margin):
    ours = build_loss("triplet", D, None, margin=margin, mining="batch_hard")
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=RAW_L2, reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=RAW_L2)

    def theirs(emb, labels):
        return loss(emb, labels, miner(emb, labels))

    _compare(ours, theirs, *_batch(2))
