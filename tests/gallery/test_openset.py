"""facerec.gallery.openset: FPIR / FNIR of gallery searches, the threshold at a target FPIR, the
fallback from a 1:1 calibration, and the Retriever keeping the served gallery's threshold current.

Expected values are recomputed here by brute force over every pair of faces (a few lines of
numpy), independently of the module's search loop."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from facerec.errors import ConfigError
from facerec.gallery import GallerySnapshot, add_to_gallery, delete_from_gallery
from facerec.gallery.openset import (
    fnir,
    fpir,
    gallery_searches,
    gallery_threshold,
    impostor_curve,
    impostors_of,
    snapshot_threshold,
    threshold_at_fpir,
    threshold_from_impostors,
)

from .conftest import make_gallery, png, unit


def people(n_people: int, per: int, d: int = 32, spread: float = 0.55, seed: int = 0):
    """Faces of ``n_people`` people, ``per`` each: unit vectors scattered around a centre each."""
    rng = np.random.default_rng(seed)
    centres = unit(rng, n_people, d)
    ids = np.repeat(np.arange(n_people), per)
    x = centres[ids] + rng.normal(scale=spread / math.sqrt(d), size=(len(ids), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), ids + 1000


def brute(x: np.ndarray, ids: np.ndarray):
    """(nearest non-mate distance, rank-1 distance and whether it is a mate) of every face."""
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None].astype(np.float64), axis=-1)
    np.fill_diagonal(d, np.inf)
    nonmated = np.where(ids[:, None] != ids[None], d, np.inf).min(axis=1)
    r1 = d.argmin(axis=1)
    has_mate = (ids[:, None] == ids[None]).sum(axis=1) > 1
    return nonmated, d.min(axis=1)[has_mate], (ids[r1] == ids)[has_mate]


def test_searches_and_rates_match_brute_force():
    x, ids = people(40, 5)
    ids[:3] = 7  # one person with 3 faces, and ...
    ids[3] = 8  # ... one with a single face: not a mated search
    got = gallery_searches(x, ids)
    nonmated, mated_d, mated_ok = brute(x, ids)
    np.testing.assert_allclose(got.nonmated, nonmated, rtol=1e-5)
    np.testing.assert_allclose(got.mated_distance, mated_d, rtol=1e-5)
    np.testing.assert_array_equal(got.mated_correct, mated_ok)
    for t in (0.3, 0.6, 0.9, 1.2):
        assert got.fpir(t) == pytest.approx(np.mean(nonmated <= t))
        assert got.fnir(t) == pytest.approx(1 - np.mean(mated_ok & (mated_d <= t)))


@pytest.mark.parametrize("target", [0.1, 0.01, 0.003])
def test_threshold_at_fpir_is_the_loosest_within_the_target(target):
    d = np.random.default_rng(1).uniform(0.2, 1.4, size=2000)
    t = threshold_at_fpir(d, target)
    s = np.sort(d)
    m = int(math.floor(target * len(d) + 1e-9))
    assert np.sum(d <= t) == m and fpir(d, t) <= target  # within the target ...
    assert fpir(d, s[m]) > target  # ... and the next non-mated distance would break it
    assert threshold_at_fpir(d, 1e-6) < s[0]  # a rate below one search: nothing may pass


def test_fnir_counts_wrong_rank1_and_too_far_mates():
    assert fnir([0.2, 0.3, 0.9, 0.1], [True, False, True, True], 0.5) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"target_fpir.*1\.5.*strictly between 0 and 1"):
        threshold_at_fpir([0.1], 1.5)


def test_a_bigger_gallery_of_the_same_people_is_never_looser():
    x, ids = people(800, 6, seed=3)
    order = np.random.default_rng(4).permutation(800)
    ts = []
    for share in (0.25, 0.5, 1.0):
        keep = np.isin(ids - 1000, order[: int(800 * share)])
        out = gallery_threshold(x[keep], ids[keep], 0.01)
        assert out["method"] == "gallery" and out["nonmated_searches"] == keep.sum()
        ts.append(out["threshold"])
    assert ts[0] >= ts[1] >= ts[2] and ts[0] > ts[2]


def test_fallback_for_one_identity_small_and_unlabelled_galleries():
    x, ids = people(300, 6, seed=5)
    nonmated, _, _ = brute(x, ids)
    # a 1:1 calibration's impostor curve: every different-person pair of the set
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    iu = np.triu_indices(len(x), 1)
    impostors = impostor_curve(d[iu][(ids[:, None] != ids[None])[iu]])
    pairs = impostors["pairs"]
    assert pairs == sum(6 * 6 * (300 - 1 - i) for i in range(300))

    one = gallery_threshold(x[:6], ids[:6], 0.01, impostors)  # one identity: no non-mated search exists
    assert one["method"] == "calibration" and one["nonmated_searches"] == 0
    per_pair = 1 - 0.99 ** (1 / 6)
    assert one["per_pair_far"] == pytest.approx(per_pair)
    imp = np.sort(d[iu][(ids[:, None] != ids[None])[iu]])
    # the distance below which that share of impostor pairs falls (log-interpolated on the curve)
    assert np.mean(imp <= one["threshold"]) == pytest.approx(per_pair, rel=0.15)

    small = gallery_threshold(x[:60], ids[:60], 0.01, impostors)  # 60 searches cannot measure 1 %
    assert small["method"] == "calibration" and small["nonmated_searches"] == 60

    unl = gallery_threshold(x, ids, 0.01, impostors, labelled=False)
    assert unl["method"] == "calibration" and unl["nonmated_searches"] == 0
    # independence over-counts false positives: the fallback is no looser than the measured one
    measured = gallery_threshold(x, ids, 0.01, impostors)
    assert measured["method"] == "gallery" and unl["threshold"] <= measured["threshold"]
    assert np.mean(nonmated <= unl["threshold"]) <= 0.01

    assert gallery_threshold(x[:6], ids[:6], 0.01, None) | {} == {
        "target_fpir": 0.01, "gallery_size": 6, "nonmated_searches": 0, "identities": 1, "measured_fpir": None,
        "threshold": None, "method": "none"}


def test_measured_threshold_is_capped_by_the_one_to_one_threshold():
    x, ids = people(300, 6, spread=1.4, seed=6)  # people who barely differ: a loose measured threshold
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    iu = np.triu_indices(len(x), 1)
    tight = impostor_curve(d[iu][(ids[:, None] != ids[None])[iu]] + 0.0)
    tight = {**tight, "distance": [v * 0.5 for v in tight["distance"]]}  # a model calibrated much tighter
    out = gallery_threshold(x, ids, 0.01, tight)
    assert out["method"] == "gallery"
    assert out["threshold"] == pytest.approx(threshold_from_impostors(tight, 1, 0.01)["threshold"])


def test_impostors_of_an_old_calibration_use_its_operating_points():
    cal = {"operating_points": [{"far": 0.1, "resolvable": True, "threshold": 0.7},
                                {"far": 0.001, "resolvable": True, "threshold": 0.5},
                                {"far": 0.0001, "resolvable": False}]}
    curve = impostors_of(cal)
    assert curve["far"] == [0.001, 0.1] and curve["distance"] == [0.5, 0.7]
    assert threshold_from_impostors(curve, 1000, 0.01) == {"threshold": pytest.approx(0.49), "resolved": False,
                                                           "per_pair_far": pytest.approx(1 - 0.99 ** 0.001)}
    assert threshold_from_impostors(curve, 1, 0.01)["threshold"] == pytest.approx(0.6)  # half-way on log rate
    assert impostors_of(None) is None and impostors_of({"operating_points": []}) is None


@pytest.mark.parametrize("kind", ["exact", "kdtree", "hnsw"])
def test_snapshot_threshold_through_the_index_equals_exact(tmp_path, kind):
    g = tmp_path / "g"
    info = make_gallery(g, n=1500, kinds=(kind,), per_identity=5, seed=2)
    delete_from_gallery(g, identity=101)
    snap = GallerySnapshot.load(g)
    live = info["identities"] != 101
    for m, e in info["embeddings"].items():
        got = snapshot_threshold(snap, m, 0.01)
        want = gallery_threshold(e[live], info["identities"][live], 0.01)
        assert got["method"] == "gallery" and got["gallery_size"] == live.sum() == snap.rows
        assert got["threshold"] == pytest.approx(want["threshold"], rel=1e-5)
        assert got["gallery_version"] == snap.version


def test_retriever_measures_again_after_writes_without_blocking_searches(tmp_path):
    from facerec.serve.retriever import RetrieverCore

    g = tmp_path / "g"
    info = make_gallery(g, n=1200, per_identity=6, seed=4)
    models = {m: info["manifest"]["models"][m]["model_id"] for m in info["embeddings"]}
    core = RetrieverCore(str(g), models, open_set={"a": {"target_fpir": 0.01, "impostors": None}})
    first = core.search("a", info["embeddings"]["a"][:1], 3)["open_set"]
    assert first["method"] == "gallery" and first["gallery_version"] == 1 and first["gallery_size"] == 1200
    assert core.search("b", info["embeddings"]["b"][:1], 3)["open_set"] is None  # no policy for b

    # a measurement that takes long: searches go on with the previous threshold meanwhile
    import facerec.gallery.openset as openset

    release = threading.Event()
    real = openset.snapshot_threshold

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    openset.snapshot_threshold = slow
    try:
        rng = np.random.default_rng(9)
        new = {m: unit(rng, 2, e.shape[1]) for m, e in info["embeddings"].items()}
        core.add(new, [5000, 5000], [png(1), png(2)])
        t0 = time.perf_counter()
        during = core.search("a", info["embeddings"]["a"][:1], 3)
        assert time.perf_counter() - t0 < 5 and during["version"] == 2
        assert during["open_set"] == first  # the previous one, saying which version it was measured on
        release.set()
        assert core.thresholds.wait(60)
    finally:
        openset.snapshot_threshold = real
        release.set()
    after = core.search("a", info["embeddings"]["a"][:1], 3)["open_set"]
    assert after["gallery_version"] == 2 and after["gallery_size"] == 1202
    core.delete(identity=int(info["identities"][0]))
    assert core.thresholds.wait(60)
    assert core.search("a", info["embeddings"]["a"][:1], 3)["open_set"]["gallery_size"] == 1196
