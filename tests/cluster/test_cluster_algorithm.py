"""The clustering: cannot-link, thresholds from the calibration, incremental == full."""

import numpy as np
import pytest

from facerec.cluster import ClusterConfig, bcubed, cluster_embeddings
from facerec.cluster.incremental import assign_new
from facerec.cluster.knn import knn_graph
from facerec.cluster.thresholds import from_calibration
from facerec.errors import ConfigError


def people(n_people=8, per=10, spread=0.02, seed=0, dim=128):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_people, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_people), per)
    return (c[y] + rng.normal(scale=spread, size=(len(y), dim))).astype(np.float32), y


CFG = dict(link=0.544, merge=0.485, k=5, use_ray=False)


def test_separated_people_found():
    x, y = people()
    res = cluster_embeddings(x, ClusterConfig(**CFG))
    assert bcubed(res.groups, y) == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    # confidence: 1 - RMS distance to the person's other faces / merge threshold, brute force
    members = np.flatnonzero(res.groups == res.groups[0])
    rms = np.sqrt(np.mean([np.sum((x[0] - x[j]) ** 2) for j in members if j != 0]))
    assert res.confidence[0] == pytest.approx(1 - rms / CFG["merge"], abs=1e-5)


def test_two_faces_of_one_photo_never_one_person():
    x, y = people(n_people=2, per=6)
    # face 0 and face 1 are one person; say they come from one photo: they must be split
    photos = np.arange(len(x)).astype(str)
    photos[1] = photos[0]
    free = cluster_embeddings(x, ClusterConfig(**CFG))
    assert free.groups[0] == free.groups[1]  # without the constraint they are together
    res = cluster_embeddings(x, ClusterConfig(**CFG), photos=photos)
    assert res.groups[0] != res.groups[1]
    assert res.stats["cannot_link_violations"] == 0
    # the constraint holds through the merge stage too: a near-duplicate in the same photo
    x2 = np.concatenate([x, x[:1] + 1e-3]).astype(np.float32)
    p2 = np.concatenate([photos, photos[:1]])
    res2 = cluster_embeddings(x2, ClusterConfig(**CFG), photos=p2)
    same_photo = np.flatnonzero(p2 == p2[0])
    assert len(set(res2.groups[same_photo])) == len(same_photo)


def test_min_faces_leaves_strangers_unassigned():
    x, _ = people(n_people=3, per=5)
    stranger = np.random.default_rng(9).normal(size=(1, 128)).astype(np.float32)
    res = cluster_embeddings(np.concatenate([x, stranger]), ClusterConfig(**{**CFG, "min_faces": 2}))
    assert res.labels[-1] == -1 and (res.labels[:-1] >= 0).all()
    assert res.confidence[-1] == 0


def test_incremental_equals_full():
    x, y = people(n_people=8, per=10, seed=3)
    cfg = ClusterConfig(**CFG)
    full = cluster_embeddings(x, cfg).groups
    old = np.arange(len(x)) % 10 < 7
    part = cluster_embeddings(x[old], cfg).groups
    new = assign_new(x[old], part, x[~old], cfg)
    inc = np.empty(len(x), np.int64)
    inc[old], inc[~old] = part, new
    # the same partition (labels may be numbered differently)
    assert bcubed(inc, full) == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    # and a new person among the new faces becomes a new group after the existing ones
    extra, _ = people(n_people=1, per=4, seed=77)
    got = assign_new(x, full, extra, cfg)
    assert len(set(got)) == 1 and got[0] == full.max() + 1


def test_incremental_respects_photos():
    x, _ = people(n_people=1, per=6)
    cfg = ClusterConfig(**CFG)
    old = cluster_embeddings(x[:4], cfg).groups
    got = assign_new(x[:4], old, x[4:], cfg, photos_old=np.array(["p0", "p1", "p2", "p3"]),
                     photos_new=np.array(["p0", "p9"]))
    assert got[0] != old[0] and got[1] == old[0]


def test_knn_graph_on_ray_equals_brute_force():
    x, _ = people(n_people=40, per=60, spread=0.05)  # 2,400 rows: two blocks, two Ray tasks
    d, i = knn_graph(x, 5, "exact", use_ray=True)
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(full, np.inf)
    want = np.sort(full, axis=1)[:, :5]
    np.testing.assert_allclose(d, want, atol=1e-4)
    assert not (i == np.arange(len(x))[:, None]).any()


def test_thresholds_from_shipped_calibration():
    from facerec.gallery.openset import impostors_of, one_to_one_threshold
    from facerec.models.calibration import read_calibration
    from facerec.models.pretrained import resolve_checkpoint

    cal = read_calibration(resolve_checkpoint("dlib_resnet"))
    th = from_calibration(cal, 1e-3, 1e-4, "dlib_resnet")
    assert th.link == pytest.approx(one_to_one_threshold(impostors_of(cal), 1e-3))
    assert th.merge < th.link  # a rarer false accept is a tighter distance
    with pytest.raises(ConfigError, match="calibrate"):
        from_calibration(None)
    with pytest.raises(ConfigError, match="link_far"):
        from_calibration(cal, link_far=2)


def test_config_errors():
    with pytest.raises(ConfigError, match="snn"):
        ClusterConfig(link=0.5, merge=0.5, snn=1.5)
    with pytest.raises(ConfigError, match="min_faces"):
        ClusterConfig(link=0.5, merge=0.5, min_faces=0)
    with pytest.raises(ConfigError, match="index kind"):
        ClusterConfig(link=0.5, merge=0.5, index="nope")


def _line(points, dim=8):
    """Faces at the given (x, y) positions, padded to ``dim`` dimensions."""
    x = np.zeros((len(points), dim), np.float32)
    x[:, :2] = np.asarray(points, np.float32)
    return x


def _mean_between(x, a, b):
    return float(np.mean([np.linalg.norm(x[i] - x[j]) for i in a for j in b]))


SPLIT = dict(link=0.45, merge=0.2, k=11, snn=0.0, use_ray=False)


def test_split_cuts_a_chain_of_few_links():
    # two tight people 1.0 apart, one look-alike pair (a4, b0) 0.4 apart bridging them
    a = [(0.0, 0.0), (0.05, 0.05), (0.0, 0.1), (0.1, 0.0), (0.3, 0.0)]
    b = [(0.7, 0.0), (0.9, 0.0), (0.95, 0.05), (1.0, 0.1), (1.0, 0.0)]
    x = _line(a + b)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    across = int((d[:5, 5:] <= SPLIT["link"]).sum())
    assert across == 1 and _mean_between(x, range(5), range(5, 10)) > 0.6  # what the cut is about
    chained = cluster_embeddings(x, ClusterConfig(**SPLIT))
    assert len(np.unique(chained.groups)) == 1  # the link stage alone chains the two people
    res = cluster_embeddings(x, ClusterConfig(**SPLIT, split=0.6, split_links=2.0))
    assert bcubed(res.groups, np.repeat([0, 1], 5)) == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    assert res.stats["groups_split"] == 1


def test_split_keeps_a_wide_group_held_by_many_links():
    # one person in two poses: two clouds whose mean distance is above the split threshold, but
    # every face of one cloud is within the link distance of several faces of the other
    left = [(0.0, y) for y in (0.0, 0.1, 0.2, 0.3)] + [(0.15, y) for y in (0.05, 0.15, 0.25)]
    right = [(0.4, y) for y in (0.0, 0.1, 0.2, 0.3)] + [(0.55, y) for y in (0.05, 0.15, 0.25)]
    x = _line(left + right)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    across = int((d[:7, 7:] <= SPLIT["link"]).sum())
    mean = _mean_between(x, range(7), range(7, 14))
    assert mean > 0.4 and across >= 2 * 7, (mean, across)
    cfg = {**SPLIT, "k": 13}
    res = cluster_embeddings(x, ClusterConfig(**cfg, split=0.4, split_links=2.0))
    assert len(np.unique(res.groups)) == 1 and res.stats["groups_split"] == 0
    # the same clouds when more links per face are asked for than they have: cut in two
    cut = cluster_embeddings(x, ClusterConfig(**cfg, split=0.4, split_links=across / 7 + 0.01))
    assert bcubed(cut.groups, np.repeat([0, 1], 7))["precision"] == 1.0 and len(np.unique(cut.groups)) == 2


def test_split_leaves_groups_above_split_max():
    a = [(0.0, 0.0), (0.05, 0.05), (0.0, 0.1), (0.1, 0.0), (0.3, 0.0)]
    b = [(0.7, 0.0), (0.9, 0.0), (0.95, 0.05), (1.0, 0.1), (1.0, 0.0)]
    res = cluster_embeddings(_line(a + b), ClusterConfig(**SPLIT, split=0.6, split_max=9))
    assert len(np.unique(res.groups)) == 1 and res.stats["groups_too_large_to_split"] == 1


def test_split_config_errors():
    with pytest.raises(ConfigError, match="split=-0.1 is invalid"):
        ClusterConfig(link=0.5, merge=0.5, split=-0.1)
    with pytest.raises(ConfigError, match="split_links"):
        ClusterConfig(link=0.5, merge=0.5, split=0.5, split_links=-1)
    with pytest.raises(ConfigError, match="split_max"):
        ClusterConfig(link=0.5, merge=0.5, split=0.5, split_max=2)


def test_split_threshold_between_link_and_merge():
    from facerec.models.calibration import read_calibration
    from facerec.models.pretrained import resolve_checkpoint

    th = from_calibration(read_calibration(resolve_checkpoint("dlib_resnet")), 1e-3, 1e-4, "dlib_resnet", 5e-4)
    assert th.merge < th.split < th.link
    with pytest.raises(ConfigError, match="split_far"):
        from_calibration(read_calibration(resolve_checkpoint("dlib_resnet")), split_far=0)
