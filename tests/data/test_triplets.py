"""Triplets drawn afresh per epoch (fixed-triplet training) and identity-balanced P x K batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from facerec.data.triplets import PKSampler, draw_triplets, triplet_dataset
from facerec.errors import ConfigError


def _train(counts: dict[int, int]) -> pd.DataFrame:
    rows = [(f"crops/{ident}_{j}.jpg", ident) for ident, n in counts.items() for j in range(n)]
    df = pd.DataFrame(rows, columns=["crop_path", "identity"])
    df["image_id"] = df["crop_path"].str.slice(6)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


COUNTS = {10: 2, 11: 5, 12: 3, 13: 1, 14: 8, 15: 2, 16: 4}  # 13 has a single image


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# --------------------------------------------------------------------------- draw_triplets


def _check_triplets(df: pd.DataFrame, out: pd.DataFrame) -> None:
    identity_of = dict(zip(df["crop_path"], df["identity"]))
    assert list(out.columns) == ["anchor", "positive", "negative", "identity", "negative_identity"]
    assert (out["anchor"] != out["positive"]).all()
    assert (out["anchor"].map(identity_of) == out["identity"]).all()
    assert (out["positive"].map(identity_of) == out["identity"]).all()
    assert (out["negative"].map(identity_of) == out["negative_identity"]).all()
    assert (out["negative_identity"] != out["identity"]).all()


def test_triplets_are_valid_and_cover_each_identity_once():
    df = _train(COUNTS)
    out = draw_triplets(df, epoch=0, seed=0)
    _check_triplets(df, out)
    # one triplet per identity with 2+ images; the single-image identity cannot anchor
    assert sorted(out["identity"]) == [10, 11, 12, 14, 15, 16]


def test_per_identity_multiplies_the_triplets():
    df = _train(COUNTS)
    out = draw_triplets(df, epoch=3, seed=1, per_identity=4)
    _check_triplets(df, out)
    assert Counter(out["identity"]) == {i: 4 for i in (10, 11, 12, 14, 15, 16)}


def test_fresh_each_epoch_and_reproducible_per_seed_and_epoch():
    df = _train({i: 6 for i in range(20)})
    e0 = draw_triplets(df, epoch=0, seed=5)
    pd.testing.assert_frame_equal(e0, draw_triplets(df, epoch=0, seed=5))
    e1 = draw_triplets(df, epoch=1, seed=5)
    assert not e0.equals(e1)
    other_seed = draw_triplets(df, epoch=0, seed=6)
    assert not e0.equals(other_seed)
    # the draw itself changes, not only the row order
    key = ["identity", "anchor", "positive", "negative"]
    assert not e0.sort_values("identity")[key].reset_index(drop=True).equals(
        e1.sort_values("identity")[key].reset_index(drop=True))


def test_every_pair_and_negative_identity_is_reachable():
    # over many epochs each identity's anchors/positives use all its images, negatives all others
    df = _train({1: 3, 2: 3, 3: 3})
    seen_images: dict[int, set] = {1: set(), 2: set(), 3: set()}
    seen_negatives: dict[int, set] = {1: set(), 2: set(), 3: set()}
    for epoch in range(60):
        out = draw_triplets(df, epoch=epoch, seed=0)
        for _, r in out.iterrows():
            seen_images[r["identity"]] |= {r["anchor"], r["positive"]}
            seen_negatives[r["identity"]].add(r["negative_identity"])
    for ident in (1, 2, 3):
        assert len(seen_images[ident]) == 3
        assert seen_negatives[ident] == {1, 2, 3} - {ident}


def test_too_few_identities_refused():
    with pytest.raises(ConfigError, match=r"^train identities=1 is invalid: expected at least 2 identities with 2 or more"):
        draw_triplets(_train({1: 5, 2: 1}), epoch=0)


@pytest.mark.slow
def test_triplet_dataset_is_a_ray_dataset(ray_cluster):
    import ray

    df = _train(COUNTS)
    ds = triplet_dataset(df, epoch=2, seed=3)
    assert isinstance(ds, ray.data.Dataset)
    assert ds.schema().names == ["anchor", "positive", "negative", "identity", "negative_identity"]
    got = ds.to_pandas()
    assert len(got) == ds.count() == 6
    pd.testing.assert_frame_equal(got.reset_index(drop=True), draw_triplets(df, epoch=2, seed=3), check_dtype=False)
    _check_triplets(df, got)


# --------------------------------------------------------------------------- PKSampler


def test_pk_batches_have_p_distinct_identities_times_k():
    labels = _train({i: n for i, n in enumerate([2, 3, 5, 8, 2, 4, 6, 3, 2, 7])})["identity"].to_numpy()
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 // 3
    used = set()
    for batch in batches:
        assert batch.shape == (12,) and batch.dtype.kind == "i"
        ids = labels[batch]
        assert len(set(ids)) == 3
        for j in range(3):  # consecutive groups of K share one identity
            group = ids[j * 4:(j + 1) * 4]
            assert (group == group[0]).all()
        used |= set(ids)
    assert len(used) == 9  # each identity at most once per epoch; 10 // 3 groups of 3


def test_pk_samples_without_replacement_when_an_identity_has_k_images():
    labels = np.repeat(np.arange(6), [4, 4, 6, 9, 4, 5])
    for batch in PKSampler(labels, p=2, k=4, seed=1):
        for j in range(2):
            group = batch[j * 4:(j + 1) * 4]
            assert len(set(group)) == 4  # distinct images


def test_pk_small_identities_repeat_and_single_image_identities_are_skipped():
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])  # identity 2 has one image
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    assert set(sampler.identities) == {0, 1, 3}
    (batch,) = list(sampler)
    assert set(labels[batch]) == {0, 1, 3}
    assert 2 not in labels[batch]


def test_pk_set_epoch_changes_order_and_is_reproducible():
    labels = np.repeat(np.arange(30), 4)
    s = PKSampler(labels, p=5, k=2, seed=0)
    e0 = [b.copy() for b in s]
    assert all(np.array_equal(a, b) for a, b in zip(e0, list(s)))  # same epoch -> same batches
    s.set_epoch(1)
    e1 = list(s)
    assert not all(np.array_equal(a, b) for a, b in zip(e0, e1))
    first_ids = lambda batches: [tuple(labels[b][::2]) for b in batches]  # noqa: E731
    assert first_ids(e0) != first_ids(e1)
    again = PKSampler(labels, p=5, k=2, seed=0)
    again.set_epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip(e1, again))
    other = PKSampler(labels, p=5, k=2, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(e0, other))


@pytest.mark.parametrize(
    "p, k, match",
    [(7, 2, r"^P=7 is invalid: expected at most 6, the number of training identities with 2\+ images "
            r"\(P x K = 7x2 is larger than the data\)"),
     (1, 2, r"^P=1 is invalid: expected at least 2 identities per batch"),
     (2, 1, r"^K=1 is invalid: expected at least 2 images per identity")],
)
def test_pk_errors(p, k, match):
    labels = _train(COUNTS)["identity"].to_numpy()  # 6 identities with 2+ images
    with pytest.raises(ConfigError, match=match):
        PKSampler(labels, p=p, k=k)
