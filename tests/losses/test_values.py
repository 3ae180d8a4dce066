"""Hand-computed values on tiny 2-D examples, margin-0 reductions, gradient finiteness, config errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facerec.errors import ConfigError
from facerec.losses import LOSSES, build_loss, loss_params


def _set_weight(loss, rows):
    with torch.no_grad():
        loss.weight.copy_(torch.tensor(rows, dtype=torch.float32))
    return loss


def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


# --- softmax family -----------------------------------------------------------------------------


def test_softmax_hand_value():
    loss = build_loss("softmax", 2, 2)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        loss.classifier.bias.copy_(torch.tensor([0.0, 1.0]))
    # logits [2, 1] -> -log(e^2 / (e^2 + e^1))
    value = loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_normface_hand_value():
    loss = _set_weight(build_loss("normface", 2, 2, scale=1.0), [[2.0, 0.0], [0.0, 1.0]])
    # x/|x| = (0.6, 0.8): cos = [0.6, 0.8] -> -log(e^0.6 / (e^0.6 + e^0.8))
    value = loss(torch.tensor([[3.0, 4.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(0.2)), rel=1e-6)


def test_cosface_hand_value():
    loss = _set_weight(build_loss("cosface", 2, 2, margin=0.5, scale=2.0), [[1.0, 0.0], [0.0, 1.0]])
    # logits [2 (1 - 0.5), 2 * 0] = [1, 0]
    value = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_arcface_hand_values():
    loss = _set_weight(build_loss("arcface", 2, 2, margin=math.pi / 6, scale=3.0), [_unit(math.pi / 3), [0.0, -1.0]])
    # theta_target = pi/3, cos(pi/3 + pi/6) = 0; other class cos = 0 -> logits [0, 0] -> log 2
    value = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(2), abs=1e-6)

    # fallback branch: theta = pi - 0.1, m = 0.5 -> theta + m > pi -> cos(theta) - m sin(pi - m)
    m, s = 0.5, 2.0
    loss = _set_weight(build_loss("arcface", 2, 2, margin=m, scale=s), [_unit(math.pi - 0.1), [0.0, 1.0]])
    target = math.cos(math.pi - 0.1) - m * math.sin(math.pi - m)
    expected = -math.log(math.exp(s * target) / (math.exp(s * target) + math.exp(0.0)))
    value = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # just inside the regular branch: theta = pi - 0.6 -> cos(theta + m) = cos(pi - 0.1)
    loss = _set_weight(build_loss("arcface", 2, 2, margin=m, scale=s), [_unit(math.pi - 0.6), [0.0, 1.0]])
    target = math.cos(math.pi - 0.1)
    expected = -math.log(math.exp(s * target) / (math.exp(s * target) + 1.0))
    assert loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def _psi_reference(theta, m):
    k = min(int(math.floor(m * theta / math.pi)), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def test_sphereface_psi_matches_the_paper_definition():
    loss = build_loss("sphereface", 2, 2, margin=4)
    thetas = np.linspace(0, math.pi, 721)
    got = loss.psi(torch.tensor(np.cos(thetas), dtype=torch.float64)).numpy()
    ref = np.array([_psi_reference(t, 4) for t in thetas])
    np.testing.assert_allclose(got, ref, atol=1e-9)
    assert np.all(np.diff(got) <= 1e-12)  # monotone decreasing, 1 -> 1 - 2m
    assert got[0] == pytest.approx(1.0) and got[-1] == pytest.approx(-7.0)
    # hand values for m = 2: theta = pi/3 -> cos(2pi/3) = -0.5; theta = 2pi/3 -> -cos(4pi/3) - 2 = -1.5
    loss2 = build_loss("sphereface", 2, 2, margin=2)
    got2 = loss2.psi(torch.tensor([math.cos(math.pi / 3), math.cos(2 * math.pi / 3)], dtype=torch.float64))
    torch.testing.assert_close(got2, torch.tensor([-0.5, -1.5], dtype=torch.float64))


def test_sphereface_annealing_schedule_and_value():
    loss = _set_weight(build_loss("sphereface", 2, 2, margin=2, scale=2.0, lambda_base=1000.0, lambda_min=5.0,
                                  gamma=0.12, power=1.0), [_unit(math.pi / 3), [0.0, 1.0]])
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert loss.current_lambda() == 1000.0
    lam = 1000.0
    target = (lam * 0.5 + (-0.5)) / (1 + lam)  # cos(pi/3) = 0.5, psi = -0.5
    expected = -math.log(math.exp(2 * target) / (math.exp(2 * target) + math.exp(0.0)))
    assert loss.train()(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert int(loss.iteration) == 1
    loss.eval()(x, y)
    assert int(loss.iteration) == 1  # evaluation does not advance the schedule
    loss.iteration.fill_(10)
    assert loss.current_lambda() == pytest.approx(1000.0 / (1 + 0.12 * 10))
    loss.iteration.fill_(100_000)
    assert loss.current_lambda() == 5.0
    assert "iteration" in loss.state_dict()

    # lambda = 0: pure A-Softmax target psi
    pure = _set_weight(build_loss("sphereface", 2, 2, margin=2, scale=2.0, lambda_base=0.0, lambda_min=0.0),
                       [_unit(2 * math.pi / 3), [0.0, 1.0]])
    expected = -math.log(math.exp(2 * -1.5) / (math.exp(2 * -1.5) + 1.0))
    assert pure(x, y).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["cosface", "arcface"])
def test_margin_zero_is_exactly_normface(name):
    torch.manual_seed(0)
    norm = build_loss("normface", 16, 7, scale=30.0)
    other = build_loss(name, 16, 7, margin=0.0, scale=30.0)
    other.load_state_dict(norm.state_dict())
    emb = F.normalize(torch.randn(32, 16), dim=1)
    emb[0] = F.normalize(norm.weight[3].detach(), dim=0)  # theta = 0
    emb[1] = -emb[0]  # theta = pi
    labels = torch.randint(0, 7, (32,))
    labels[0] = labels[1] = 3
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    a, b = norm(e1, labels), other(e2, labels)
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=0, atol=0)


def _near(direction, angle):
    """Unit 3-D vector at ``angle`` from unit ``direction`` (rotating toward a fixed orthogonal axis)."""
    ortho = torch.tensor([0.0, 0.0, 1.0])
    return math.cos(angle) * direction + math.sin(angle) * ortho


@pytest.mark.parametrize(
    "name,params",
    [
        ("normface", {}),
        ("cosface", {}),
        ("arcface", {}),
        ("arcface", {"margin": 1.2}),
        ("sphereface", {}),
        ("sphereface", {"lambda_base": 0.0, "lambda_min": 0.0}),
        ("softmax", {}),
    ],
)
@pytest.mark.parametrize("angle", [0.0, 1e-4, 1e-2, math.pi - 1e-2, math.pi - 1e-4, math.pi])
def test_gradients_are_finite_near_zero_and_pi(name, params, angle):
    loss = build_loss(name, 3, 2, **params)
    if hasattr(loss, "weight"):
        _set_weight(loss, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    emb = _near(torch.tensor([1.0, 0.0, 0.0]), angle).unsqueeze(0).requires_grad_(True)
    value = loss(emb, torch.tensor([0]))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())


def test_loss_parameters_are_trainable_classifiers():
    for name in LOSSES.names():
        loss = build_loss(name, 8, 4)
        assert loss.needs_classes == (name != "triplet")
        assert (len(list(loss.parameters())) > 0) == loss.needs_classes


# --- triplet --------------------------------------------------------------------------------------

# points on a line: labels [0, 0, 1, 1]; distances d01=1, d02=.5, d03=3, d12=.5, d13=2, d23=2.5
POINTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    "mining,expected",
    [
        # anchors: 0: 1-.5+.2, 1: 1-.5+.2, 2: 2.5-.5+.2, 3: 2.5-2+.2 -> mean
        ("batch_hard", (0.7 + 0.7 + 2.2 + 0.7) / 4),
        # positive-loss triplets: (0,1,2) .7, (1,0,2) .7, (2,3,0) 2.2, (2,3,1) 2.2, (3,2,1) .7
        ("batch_all", (0.7 + 0.7 + 2.2 + 2.2 + 0.7) / 5),
        # pairs (0,1)->n=3: 0; (1,0)->n=3: 0; (2,3)-> none farther than 2.5, farthest .5: 2.2; (3,2)->n=0: 0
        ("semi_hard", 2.2 / 4),
    ],
)
def test_triplet_mining_hand_values(mining, expected):
    loss = build_loss("triplet", 2, None, margin=0.2, mining=mining)
    assert loss(POINTS, LABELS).item() == pytest.approx(expected, rel=1e-5)


def _semi_hard_reference(emb, labels, margin):
    """Brute force, written from the FaceNet/TF definition with plain Python loops."""
    x = emb.double().numpy()
    n = len(x)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    terms = []
    for a, p in itertools.product(range(n), range(n)):
        if a == p or labels[a] != labels[p]:
            continue
        negs = [j for j in range(n) if labels[j] != labels[a]]
        if not negs:
            continue
        farther = [d[a, j] for j in negs if d[a, j] > d[a, p]]
        d_an = min(farther) if farther else max(d[a, j] for j in negs)
        terms.append(max(0.0, d[a, p] - d_an + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    labels = torch.arange(12) // 3
    loss = build_loss("triplet", 4, None, margin=0.3, mining="semi_hard")
    assert loss(emb, labels).item() == pytest.approx(_semi_hard_reference(emb, labels.tolist(), 0.3), rel=1e-5)


def test_fixed_triplets_hand_values():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # d = 5
    n = torch.tensor([[6.0, 8.0], [0.0, 1.0]])  # d = 10 (loss 0), d = 1 (loss 5 - 1 + .2)
    assert build_loss("triplet", 2, None, margin=0.2).forward_triplets(a, p, n).item() == pytest.approx(4.2 / 2)
    sq = build_loss("triplet", 2, None, margin=0.2, squared=True)
    assert sq.forward_triplets(a, p, n).item() == pytest.approx((25 - 1 + 0.2) / 2)
    with pytest.raises(ConfigError, match=r"anchor/positive/negative=.*expected three N x d tensors"):
        sq.forward_triplets(a, p, n[:1])


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_triplet_without_valid_triplets_is_zero_and_duplicates_give_finite_gradients(mining):
    loss = build_loss("triplet", 2, None, mining=mining)
    emb = POINTS.clone().requires_grad_(True)
    for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):  # no negatives / no positives
        value = loss(emb, labels)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(emb.grad).all()
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)  # d = 0 pairs
    value = loss(dup, LABELS)
    value.backward()
    assert value.item() > 0 and torch.isfinite(dup.grad).all()
    trip = torch.ones(2, 2, requires_grad=True)
    loss.forward_triplets(trip, trip, trip).backward()
    assert torch.isfinite(trip.grad).all()


# --- configuration errors -------------------------------------------------------------------------


def test_build_loss_errors():
    with pytest.raises(ConfigError, match=r"arcface.mining='batch_hard' is invalid: expected a parameter of the arcface loss: one of \['margin', 'scale'\]"):
        build_loss("arcface", 8, 4, mining="batch_hard")
    with pytest.raises(ConfigError, match=r"loss='center' is invalid: expected one of \['arcface', 'cosface'"):
        build_loss("center", 8, 4)
    with pytest.raises(ConfigError, match=r"num_classes=None is invalid: expected an integer >= 2"):
        build_loss("cosface", 8, None)
    with pytest.raises(ConfigError, match=r"margin=-0.1 is invalid"):
        build_loss("triplet", 8, None, margin=-0.1)
    with pytest.raises(ConfigError, match=r"margin=2.5 is invalid: expected an integer >= 1"):
        build_loss("sphereface", 8, 4, margin=2.5)
    with pytest.raises(ConfigError, match=r"margin=1.6 is invalid: expected a number in \[0, pi/2\)"):
        build_loss("arcface", 8, 4, margin=1.6)
    with pytest.raises(ConfigError, match=r"triplet mining='hardest' is invalid: expected one of \['batch_all', 'batch_hard', 'semi_hard'\]"):
        build_loss("triplet", 8, None, mining="hardest")
    with pytest.raises(ConfigError, match=r"scale=0 is invalid"):
        build_loss("normface", 8, 4, scale=0)
    assert loss_params("arcface") == {"margin": 0.5, "scale": 64.0}
    assert loss_params("triplet") == {"margin": 0.2, "mining": "batch_hard", "squared": False}


def test_bad_inputs_at_call_time():
    loss = build_loss("arcface", 4, 3)
    with pytest.raises(ConfigError, match=r"labels='class indices in \[0, 3\]' is invalid: expected indices in \[0, 3\)"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match=r"embeddings='tensor of shape \(2, 5\)' is invalid: expected N x 4"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"labels=.*expected an integer tensor of shape \(2,\)"):
        loss(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
