"""Identity-disjoint splits (random and official) and the query / gallery protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facerec.data.splits import assign_splits, query_gallery
from facerec.errors import ConfigError


def _table(n_identities: int = 50, seed: int = 0, min_images: int = 1, max_images: int = 6) -> pd.DataFrame:
    """One row per image, identities with a random number of images, shuffled rows."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_images, max_images + 1, n_identities)
    identity = np.repeat(np.arange(1000, 1000 + n_identities), counts)
    df = pd.DataFrame({"image_id": [f"{i:06d}.jpg" for i in range(len(identity))], "identity": identity})
    df["partition"] = (df["identity"] % 3).astype(np.int8)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _identity_sets(df: pd.DataFrame) -> dict[str, set]:
    return {s: set(df.loc[df["split"] == s, "identity"]) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------- assign_splits


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_splits_are_identity_disjoint_and_cover_everything(seed):
    df = _table(seed=seed)
    out = assign_splits(df, mode="random", seed=seed)
    assert len(out) == len(df) and set(out["split"]) == {"train", "val", "test"}
    pd.testing.assert_frame_equal(out.drop(columns="split"), df)  # input rows untouched, in order
    assert "split" not in df.columns  # the caller's table is not modified
    sets = _identity_sets(out)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(df["identity"])
    assert (out.groupby("identity")["split"].nunique() == 1).all()


def test_random_split_fractions_count_identities():
    df = _table(n_identities=200, seed=3)
    out = assign_splits(df, val_fraction=0.1, test_fraction=0.2, seed=0)
    sizes = {k: len(v) for k, v in _identity_sets(out).items()}
    assert sizes == {"train": 140, "val": 20, "test": 40}
    # the study's 80/20 (no validation)
    sizes = {k: len(v) for k, v in _identity_sets(assign_splits(df, val_fraction=0.0, test_fraction=0.2)).items()}
    assert sizes == {"train": 160, "val": 0, "test": 40}
    # rounding: 7 identities, 20% -> round(1.4) = 1 test, round(0.7) = 1 val
    sizes = {k: len(v) for k, v in _identity_sets(assign_splits(_table(n_identities=7))).items()}
    assert sizes == {"train": 5, "val": 1, "test": 1}


def test_random_split_is_deterministic_per_seed_and_independent_of_row_order():
    df = _table(n_identities=100, seed=5)
    a = assign_splits(df, seed=11)
    b = assign_splits(df, seed=11)
    pd.testing.assert_frame_equal(a, b)
    shuffled = df.sample(frac=1.0, random_state=99)
    c = assign_splits(shuffled, seed=11)
    assert _identity_sets(c) == _identity_sets(a)
    d = assign_splits(df, seed=12)
    assert _identity_sets(d) != _identity_sets(a)


def test_official_mode_follows_the_partition_file():
    df = _table(n_identities=30)
    out = assign_splits(df, mode="official")
    expected = df["partition"].map({0: "train", 1: "val", 2: "test"})
    assert (out["split"] == expected).all()
    assert (out.groupby("identity")["split"].nunique() == 1).all()


def test_official_mode_errors():
    df = _table(n_identities=10)
    no_partition = df.copy()
    no_partition.loc[[0, 3], "partition"] = -1
    with pytest.raises(ConfigError, match=r"^split mode='official' is invalid: expected a partition for every image; "
                                          r"2 images have none .* use mode='random'"):
        assign_splits(no_partition, mode="official")
    with pytest.raises(ConfigError, match=r"expected a partition for every image; \d+ images have none"):
        assign_splits(df.drop(columns="partition"), mode="official")
    crossing = df.copy()
    ident = int(crossing["identity"].iloc[0])
    rows = crossing.index[crossing["identity"] == ident]
    crossing = pd.concat([crossing, crossing.loc[rows[:1]].assign(partition=(crossing.loc[rows[0], "partition"] + 1) % 3,
                                                                 image_id="extra.jpg")], ignore_index=True)
    with pytest.raises(ConfigError, match=rf"identity-disjoint partition file; identity {ident} is in several partitions"):
        assign_splits(crossing, mode="official")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "by_image"}, r"^split mode='by_image' is invalid: expected 'random' or 'official'"),
     ({"val_fraction": -0.1}, r"^val_fraction=-0\.1 is invalid: expected a fraction in \[0, 1\)"),
     ({"test_fraction": 1.0}, r"^test_fraction=1\.0 is invalid"),
     ({"val_fraction": 0.5, "test_fraction": 0.5}, r"^val_fraction \+ test_fraction=1\.0 is invalid: expected less than 1")],
)
def test_random_mode_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        assign_splits(_table(), **kwargs)


def test_too_few_identities_and_missing_column():
    tiny = _table(n_identities=2)
    with pytest.raises(ConfigError, match=r"^identities=2 is invalid: expected enough identities"):
        assign_splits(tiny, val_fraction=0.4, test_fraction=0.4)
    with pytest.raises(ConfigError, match=r"^df=.* is invalid: expected a table with an 'identity' column"):
        assign_splits(pd.DataFrame({"image_id": ["a.jpg"]}))


# --------------------------------------------------------------------------- query / gallery


def test_one_query_per_identity_rest_in_gallery():
    df = _table(n_identities=40, min_images=1, max_images=5, seed=2)
    query, gallery = query_gallery(df, seed=0)
    counts = df["identity"].value_counts()
    multi = set(counts.index[counts >= 2])
    single = set(counts.index[counts == 1])
    assert single and multi  # the table has both kinds
    assert query["identity"].is_unique and set(query["identity"]) == multi
    assert list(query["identity"]) == sorted(multi)
    # every image exactly once, in the query or the gallery
    assert sorted(query["image_id"].tolist() + gallery["image_id"].tolist()) == sorted(df["image_id"])
    # single-image identities only in the gallery (nothing to retrieve for them as queries)
    assert single <= set(gallery["identity"])
    # each queried identity keeps count - 1 images in the gallery, so a match always exists
    g_counts = gallery["identity"].value_counts()
    for ident in multi:
        assert g_counts[ident] == counts[ident] - 1
    assert list(query.columns) == list(df.columns) and list(gallery.columns) == list(df.columns)


def test_query_gallery_ignores_the_table_index():
    # a table concatenated without ignore_index repeats index labels: still one query per identity
    a = pd.DataFrame({"image_id": ["a1.jpg", "a2.jpg", "a3.jpg"], "identity": [1, 1, 1]})
    b = pd.DataFrame({"image_id": ["b1.jpg", "b2.jpg", "b3.jpg"], "identity": [2, 2, 2]})
    query, gallery = query_gallery(pd.concat([a, b]), seed=0)
    assert list(query["identity"]) == [1, 2]
    assert len(gallery) == 4
    assert sorted(query["image_id"].tolist() + gallery["image_id"].tolist()) == ["a1.jpg", "a2.jpg", "a3.jpg", "b1.jpg",
                                                                                "b2.jpg", "b3.jpg"]
    # and the same draw as with a clean index
    q_clean, g_clean = query_gallery(pd.concat([a, b], ignore_index=True), seed=0)
    pd.testing.assert_frame_equal(query, q_clean)
    pd.testing.assert_frame_equal(gallery, g_clean)


def test_query_choice_is_seeded():
    df = _table(n_identities=60, min_images=3, max_images=8, seed=4)
    q0, g0 = query_gallery(df, seed=0)
    q0b, g0b = query_gallery(df, seed=0)
    pd.testing.assert_frame_equal(q0, q0b)
    pd.testing.assert_frame_equal(g0, g0b)
    q1, _ = query_gallery(df, seed=1)
    assert list(q1["identity"]) == list(q0["identity"])
    assert (q1["image_id"] != q0["image_id"]).any()


def test_distractors_extend_the_gallery():
    df = _table(n_identities=10, min_images=2)
    distractors = pd.DataFrame({"image_id": ["d1.jpg", "d2.jpg"], "identity": [5000, 5001],
                                "partition": np.array([0, 0], np.int8)})
    query, gallery = query_gallery(df, distractors=distractors)
    assert len(gallery) == len(df) - len(query) + 2
    assert {"d1.jpg", "d2.jpg"} <= set(gallery["image_id"])
    assert not ({5000, 5001} & set(query["identity"]))


def test_distractors_sharing_a_queried_identity_are_refused():
    df = _table(n_identities=10, min_images=2)
    ident = int(df["identity"].iloc[0])
    distractors = pd.DataFrame({"image_id": ["d1.jpg", "d2.jpg"], "identity": [ident, 5001]})
    with pytest.raises(ConfigError, match=rf"^distractors='1 shared identities \(e\.g\. \[{ident}\]\)' is invalid: "
                                          "expected images of identities that are not queried"):
        query_gallery(df, distractors=distractors)


def test_empty_table_refused():
    with pytest.raises(ConfigError, match=r"^df='empty table' is invalid: expected at least one identity with two images"):
        query_gallery(pd.DataFrame({"image_id": [], "identity": []}))
