"""The served gallery built from real crops and models (facerec.gallery through serve's cache):
layout, embeddings against the model run by hand, search against brute force, atomic add."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.gallery import GallerySnapshot, add_to_gallery, read_manifest, read_table


def _reference_gallery_embeddings(gallery: Path, checkpoint: str) -> np.ndarray:
    """Embed every crop file of the table directly with the checkpoint (no serve code)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    tf = test_transform(int(meta["image_size"]))
    table = read_table(gallery)
    with torch.inference_mode():
        x = torch.stack([tf(read_image(gallery / p)) for p in table["crop_path"]])
        return model(x).numpy()


def test_build_layout_and_embeddings(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    manifest = read_manifest(gallery)
    crops = pd.read_parquet(serve_artifacts["crops"] / "crops.parquet")
    table = read_table(gallery)
    assert manifest["version"] == 1 and manifest["rows"] == len(crops) == len(table)
    assert table["row_id"].tolist() == list(range(len(table)))
    assert table["source_id"].tolist() == crops["image_id"].tolist()
    # served ids are random and cannot be derived from the dataset's names
    assert table["image_id"].nunique() == len(table) and not set(table["image_id"]) & set(crops["image_id"])
    assert table["identity"].tolist() == crops["identity"].tolist()
    np.testing.assert_array_equal(table[list(ATTRIBUTE_NAMES)].to_numpy(), crops[list(ATTRIBUTE_NAMES)].to_numpy())
    for name, ckpt in serve_artifacts["checkpoints"].items():
        entry = manifest["models"][name]
        assert entry["model_id"] == serve_artifacts["model_ids"][name]
        seg = manifest["segments"][0]
        assert (gallery / seg["indexes"][name]["kdtree"] / "index.json").is_file()
        stored = np.load(gallery / "segments" / seg["id"] / f"emb-{name}.npy")
        np.testing.assert_allclose(stored, _reference_gallery_embeddings(gallery, ckpt), atol=1e-5)
        # embeddings of an untrained-but-recalibrated model must still tell crops apart
        d = np.linalg.norm(stored[:, None] - stored[None], axis=-1)[np.triu_indices(len(stored), 1)]
        assert np.median(d) > 0.05


def test_search_matches_brute_force(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    snap = GallerySnapshot.load(gallery, ["mnv3"], serve_artifacts["model_ids"])
    emb = np.load(gallery / "segments" / "s000001" / "emb-mnv3.npy")
    rng = np.random.default_rng(0)
    queries = emb[[0, 5]] + rng.normal(0, 0.05, size=(2, emb.shape[1])).astype(np.float32)
    k = 6
    res = snap.search("mnv3", queries, k)
    table = read_table(gallery)
    for q, hits in zip(queries, res):
        dist = np.sqrt(((emb - q) ** 2).sum(1))
        order = np.argsort(dist, kind="stable")[:k]
        assert [h["rank"] for h in hits] == list(range(1, k + 1))
        np.testing.assert_allclose([h["distance"] for h in hits], dist[order], rtol=1e-5, atol=1e-5)
        assert [h["row_id"] for h in hits] == order.tolist()
        assert [h["image_id"] for h in hits] == table["image_id"].iloc[order].tolist()
        assert [h["identity"] for h in hits] == table["identity"].iloc[order].tolist()
        top = table[list(ATTRIBUTE_NAMES)].iloc[order[0]].to_numpy()
        for h in hits:
            mine = np.array([h["attributes"][a] for a in ATTRIBUTE_NAMES])
            assert h["attribute_agreement"] == pytest.approx(np.mean(mine == top))
        assert hits[0]["attribute_agreement"] == 1.0
    # k larger than the gallery: every row, once
    assert len(snap.search("mnv3", queries[:1], 1000)[0]) == len(table)


def test_index_kind_override_same_neighbours(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    kd = GallerySnapshot.load(gallery, ["r18"])
    ex = GallerySnapshot.load(gallery, ["r18"], index_kind="exact")
    assert kd.models["r18"].index_kind == "kdtree" and ex.models["r18"].index_kind == "exact"
    q = np.load(gallery / "segments" / "s000001" / "emb-r18.npy")[:3]
    a, b = kd.search("r18", q, 5), ex.search("r18", q, 5)
    assert [[h["row_id"] for h in r] for r in a] == [[h["row_id"] for h in r] for r in b]


def test_snapshot_refuses_other_model(serve_artifacts):
    with pytest.raises(ArtifactMismatchError, match=r"built by model_id .* but the served checkpoint is deadbeef"):
        GallerySnapshot.load(serve_artifacts["gallery"], ["mnv3"], {"mnv3": "deadbeef"})
    with pytest.raises(ArtifactMismatchError, match=r"no index for model 'resnet50'"):
        GallerySnapshot.load(serve_artifacts["gallery"], ["resnet50"])


def test_crop_file_only_by_id(serve_artifacts):
    snap = GallerySnapshot.load(serve_artifacts["gallery"], ["mnv3"])
    table = snap.table()
    first, source = table["image_id"].iloc[0], table["source_id"].iloc[0]
    assert snap.crop_file(first).read_bytes() == (serve_artifacts["crops"] / "crops" / f"{source}.png").read_bytes()
    for bad in ["nope.jpg", "../gallery.json", "gallery.json", "crops/" + first, "/etc/passwd", source]:
        assert snap.crop_file(bad) is None


def _emb(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(1, d)).astype(np.float32)
    return v / np.linalg.norm(v)


def test_add_is_atomic_and_versioned(gallery_copy, serve_artifacts):
    ids = serve_artifacts["model_ids"]
    before = read_manifest(gallery_copy)
    snap0 = GallerySnapshot.load(gallery_copy, None, ids)
    crop = snap0.crop_file(snap0.table()["image_id"].iloc[0]).read_bytes()
    e = {"mnv3": _emb(32, 1), "r18": _emb(32, 2)}
    with pytest.raises(ArtifactMismatchError, match=r"embeddings for 'r18' have shape \(1, 5\), expected \(1, 32\)"):
        add_to_gallery(gallery_copy, {"mnv3": e["mnv3"], "r18": np.zeros((1, 5), np.float32)}, [7], [crop])
    assert read_manifest(gallery_copy) == before

    out = add_to_gallery(gallery_copy, e, [4242], [crop], [[1, 2, 3, 4]])
    n = before["rows"]
    assert out["version"] == 2 and out["row_ids"] == [n]
    after = read_manifest(gallery_copy)
    assert after["version"] == 2 and after["rows"] == n + 1
    snap = GallerySnapshot.load(gallery_copy, None, ids, previous=snap0)
    for name in ids:
        top = snap.search(name, e[name], 1)[0][0]
        assert top["image_id"] == out["image_ids"][0] and top["identity"] == 4242
        assert top["distance"] == pytest.approx(0.0, abs=1e-5)
        assert set(top["attributes"].values()) == {0}  # uploads carry no labels
    assert snap.crop_file(out["image_ids"][0]).read_bytes() == crop
    row = read_table(gallery_copy).iloc[-1]
    assert [row.box_x, row.box_y, row.box_w, row.box_h] == [1, 2, 3, 4] and row.source == "upload"
    # the old snapshot (a replica that has not reloaded yet) is untouched
    assert snap0.rows == n and snap0.search("mnv3", e["mnv3"], 1)[0][0]["row_id"] < n
