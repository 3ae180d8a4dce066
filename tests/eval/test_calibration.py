"""The calibration maths (facerec.eval.calibration) against hand-made distances with known
TAR/FAR/EER and against scikit-learn's ROC; thresholds are never fitted on the held-out fold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve as sk_roc_curve

from facerec.errors import ConfigError
from facerec.eval.calibration import (FoldedDistances, cross_validate, equal_error_rate, identity_folds, pair_distances,
                                      pairs_within_folds, rates, roc_curve, threshold_at_far)


def test_threshold_and_rates_on_hand_made_distances():
    genuine = np.arange(1, 11) / 10          # 0.1 .. 1.0
    impostor = 0.5 + np.arange(1, 101) / 100  # 0.51 .. 1.50
    t = threshold_at_far(impostor, 0.1)       # 10 of 100 impostors may pass: up to 0.60, not 0.61
    assert t == pytest.approx(0.605)
    assert rates(genuine, impostor, t) == pytest.approx((0.6, 0.1))
    t = threshold_at_far(impostor, 0.01)      # 1 impostor: 0.51
    assert t == pytest.approx(0.515)
    assert rates(genuine, impostor, t) == pytest.approx((0.5, 0.01))
    t = threshold_at_far(impostor, 0.001)     # none may pass: just below the nearest impostor
    assert t < 0.51 and t > 0.5099999
    assert rates(genuine, impostor, t) == pytest.approx((0.5, 0.0))


def test_tied_impostors_are_accepted_or_rejected_together():
    impostor = np.array([0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.7, 0.8, 0.9, 1.0])
    t = threshold_at_far(impostor, 0.3)  # 3 may pass, but 0.5 is shared by 4: only 0.3 and 0.4 pass
    assert t == pytest.approx(0.45)
    assert np.mean(impostor <= t) <= 0.3
    with pytest.raises(ConfigError, match=r"far=0 is invalid"):
        threshold_at_far(impostor, 0)


def test_roc_equals_scikit_learn():
    rng = np.random.default_rng(0)
    genuine = np.round(rng.normal(0.5, 0.15, 300), 3)  # rounded: ties inside and across the sets
    impostor = np.round(rng.normal(1.0, 0.15, 3000), 3)
    t, far, tar = roc_curve(genuine, impostor)
    y = np.concatenate([np.ones(genuine.size), np.zeros(impostor.size)])
    fpr, tpr, thr = sk_roc_curve(y, -np.concatenate([genuine, impostor]), drop_intermediate=False)
    np.testing.assert_allclose(far, fpr)
    np.testing.assert_allclose(tar, tpr)
    np.testing.assert_allclose(t[1:], -thr[1:])


def test_equal_error_rate_known_and_against_the_interpolated_roc():
    eer, t = equal_error_rate([1, 2, 3, 4], [2.5, 5, 6, 7])
    assert (eer, t) == (0.25, 3.0)  # at t = 3: FRR = 1/4 (4 rejected), FAR = 1/4 (2.5 accepted)
    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(0.6, 0.2, 500), rng.normal(1.1, 0.2, 5000)
    eer, t = equal_error_rate(genuine, impostor)
    y = np.concatenate([np.ones(genuine.size), np.zeros(impostor.size)])
    fpr, tpr, _ = sk_roc_curve(y, -np.concatenate([genuine, impostor]))
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer == pytest.approx(reference, abs=1 / genuine.size)
    tar, far = rates(genuine, impostor, t)
    assert far == pytest.approx(1 - tar, abs=2 / genuine.size)


def _three_folds(seed=0, n_gen=100, n_imp=20000):
    rng = np.random.default_rng(seed)
    g = np.concatenate([rng.normal(0.5 + 0.05 * f, 0.1, n_gen) for f in range(3)])
    i = np.concatenate([rng.normal(1.0 + 0.05 * f, 0.1, n_imp) for f in range(3)])
    return FoldedDistances(g, np.repeat(np.arange(3), n_gen), i, np.repeat(np.arange(3), n_imp))


def test_cross_validation_fits_each_threshold_on_the_other_folds_only():
    data = _three_folds()
    cv = cross_validate(data, (0.1, 0.01, 0.001))
    pf = cv["per_fold"]
    for fold in range(3):
        others = data.impostor[data.impostor_fold != fold]
        out_g = data.genuine[data.genuine_fold == fold]
        out_i = data.impostor[data.impostor_fold == fold]
        for far in (0.1, 0.01, 0.001):
            row = pf[(pf["fold"] == fold) & (pf["point"] == "far") & (pf["far"] == far)].iloc[0]
            t = threshold_at_far(others, far)
            assert row["threshold"] == t
            assert row["tar"] == pytest.approx(np.mean(out_g <= t))
            assert row["far_measured"] == pytest.approx(np.mean(out_i <= t))
    # Moving the held-out fold's own distances does not move the threshold it is judged by.
    shifted = FoldedDistances(data.genuine, data.genuine_fold,
                              np.where(data.impostor_fold == 0, data.impostor - 0.4, data.impostor), data.impostor_fold)
    pf2 = cross_validate(shifted, (0.1, 0.01, 0.001))["per_fold"]
    a = pf[(pf["fold"] == 0) & (pf["point"] == "far")]["threshold"].to_numpy()
    b = pf2[(pf2["fold"] == 0) & (pf2["point"] == "far")]["threshold"].to_numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pf[(pf["fold"] == 1) & (pf["point"] == "far")]["threshold"].to_numpy(),
                              pf2[(pf2["fold"] == 1) & (pf2["point"] == "far")]["threshold"].to_numpy())
    points = {p["far"]: p for p in cv["operating_points"]}
    p = points[0.01]
    rows = pf[(pf["point"] == "far") & (pf["far"] == 0.01)]
    assert p["tar_mean"] == pytest.approx(rows["tar"].mean())
    assert p["tar_std"] == pytest.approx(rows["tar"].std(ddof=1))
    assert p["tar_pooled"] == pytest.approx(rows["accepted_genuine"].sum() / rows["n_genuine"].sum())
    assert p["threshold"] == threshold_at_far(data.impostor, 0.01)  # the served one: all folds
    eer_rows = pf[pf["point"] == "eer"]
    assert cv["eer"]["mean"] == pytest.approx(np.mean([equal_error_rate(data.genuine[data.genuine_fold == f],
                                                                        data.impostor[data.impostor_fold == f])[0]
                                                       for f in range(3)]))
    assert eer_rows["threshold"].iloc[1] == equal_error_rate(data.genuine[data.genuine_fold != 1],
                                                             data.impostor[data.impostor_fold != 1])[1]


def test_unresolvable_far_is_said_not_reported():
    data = _three_folds(n_imp=300)  # LFW's 300 mismatched pairs per fold
    points = {p["far"]: p for p in cross_validate(data, (0.1, 0.01, 0.001))["operating_points"]}
    assert points[0.1]["resolvable"] and points[0.1]["tar_mean"] is not None
    for far in (0.01, 0.001):
        assert not points[far]["resolvable"]
        assert "threshold" not in points[far] and "tar_mean" not in points[far]
    assert points[0.001]["note"] == ("not resolvable with 300 impostor pairs (smallest held-out fold): FAR 0.001 needs "
                                     "at least 10000 (10 false accepts)")
    assert "needs at least 1000 " in points[0.01]["note"]


def test_pairs_within_folds_all_and_sampled():
    ident = np.array([1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 6])
    fold = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    g, gf, i, if_ = pairs_within_folds(ident, fold)
    assert len(g) + len(i) == 15 + 10  # C(6,2) + C(5,2)
    assert sorted(map(tuple, g)) == [(0, 1), (2, 3), (2, 4), (3, 4), (6, 7), (8, 9)]
    assert (fold[i[:, 0]] == fold[i[:, 1]]).all() and (ident[i[:, 0]] != ident[i[:, 1]]).all()
    np.testing.assert_array_equal(if_, fold[i[:, 0]])
    np.testing.assert_array_equal(gf, fold[g[:, 0]])
    rng = np.random.default_rng(0)
    ident = rng.integers(0, 40, 500)
    fold = ident % 2
    g, _, i, _ = pairs_within_folds(ident, fold, max_pairs_per_fold=5000, seed=3)
    both = np.concatenate([g, i])
    assert len(both) == 10000 and len({tuple(p) for p in both}) == 10000
    assert (both[:, 0] < both[:, 1]).all() and (fold[both[:, 0]] == fold[both[:, 1]]).all()
    emb = rng.normal(size=(500, 8))
    np.testing.assert_allclose(pair_distances(emb, g[:5]), [np.linalg.norm(emb[a] - emb[b]) for a, b in g[:5]])


def test_identity_folds_keep_each_identity_in_one_fold():
    ident = np.repeat(np.arange(10), 3)
    f = identity_folds(ident, 3, seed=1)
    assert all(len(set(f[ident == v])) == 1 for v in range(10))
    assert sorted(np.bincount(f[::3])) == [3, 3, 4]
    with pytest.raises(ConfigError, match="at most the 10 identities"):
        identity_folds(ident, 11)
