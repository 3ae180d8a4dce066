"""The served gallery folder: build, search against brute force, atomic add, versioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.serve.gallery import GallerySnapshot, add_to_gallery, read_manifest


def _reference_gallery_embeddings(gallery: Path, checkpoint: str) -> np.ndarray:
    """Embed every crop file of the table directly with the checkpoint (no serve code)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    tf = test_transform(int(meta["image_size"]))
    table = pd.read_parquet(gallery / "gallery.parquet")
    with torch.inference_mode():
        x = torch.stack([tf(read_image(gallery / p)) for p in table["crop_path"]])
        return model(x).numpy()


def test_build_layout_and_embeddings(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    manifest = read_manifest(gallery)
    crops = pd.read_parquet(serve_artifacts["crops"] / "crops.parquet")
    table = pd.read_parquet(gallery / "gallery.parquet")
    assert manifest["version"] == 1 and manifest["rows"] == len(crops) == len(table)
    assert table["row_id"].tolist() == list(range(len(table)))
    assert table["image_id"].tolist() == crops["image_id"].tolist()
    assert table["identity"].tolist() == crops["identity"].tolist()
    np.testing.assert_array_equal(table[list(ATTRIBUTE_NAMES)].to_numpy(), crops[list(ATTRIBUTE_NAMES)].to_numpy())
    for name, ckpt in serve_artifacts["checkpoints"].items():
        entry = manifest["models"][name]
        assert entry["model_id"] == serve_artifacts["model_ids"][name]
        assert (gallery / entry["path"] / "index" / "index.json").is_file()
        stored = np.load(gallery / entry["path"] / "embeddings.npy")
        np.testing.assert_allclose(stored, _reference_gallery_embeddings(gallery, ckpt), atol=1e-5)
        # embeddings of an untrained-but-recalibrated model must still tell crops apart
        d = np.linalg.norm(stored[:, None] - stored[None], axis=-1)[np.triu_indices(len(stored), 1)]
        assert np.median(d) > 0.05


def test_search_matches_brute_force(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    snap = GallerySnapshot.load(gallery, ["mnv3"], serve_artifacts["model_ids"])
    emb = np.load(gallery / read_manifest(gallery)["models"]["mnv3"]["path"] / "embeddings.npy")
    rng = np.random.default_rng(0)
    queries = emb[[0, 5]] + rng.normal(0, 0.05, size=(2, emb.shape[1])).astype(np.float32)
    k = 6
    res = snap.search("mnv3", queries, k)
    table = pd.read_parquet(gallery / "gallery.parquet")
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


def test_attribute_agreement_ignores_unknown():
    """By hand: 2 of the 3 attributes known on both sides agree -> 2/3."""
    from facerec.serve.gallery import GallerySnapshot as G

    attrs = np.zeros((2, 40), dtype=np.int8)
    attrs[0, :4] = [1, -1, 1, 1]
    attrs[1, :4] = [1, -1, -1, 0]  # 4th unknown on one side: not counted
    table = pd.DataFrame({"row_id": [0, 1], "image_id": ["a", "b"], "identity": [1, 2], "crop_path": ["x", "y"]})
    for i, a in enumerate(ATTRIBUTE_NAMES):
        table[a] = attrs[:, i]

    class TwoNN:
        def search(self, q, k):
            return np.array([[0.0, 0.5]], dtype=np.float32), np.array([[0, 1]])

    from facerec.serve.gallery import LoadedModel

    snap = G(Path("."), {"version": 1, "rows": 2}, table, {"m": LoadedModel("m", "id", 2, "exact", TwoNN(), Path("."))}, None)
    hits = snap.search("m", np.zeros((1, 2)), 2)[0]
    assert hits[1]["attribute_agreement"] == pytest.approx(2 / 3)


def test_index_kind_override_same_neighbours(serve_artifacts):
    gallery = serve_artifacts["gallery"]
    kd = GallerySnapshot.load(gallery, ["r18"])
    ex = GallerySnapshot.load(gallery, ["r18"], index_kind="exact")
    assert kd.models["r18"].index_kind == "kdtree" and ex.models["r18"].index_kind == "exact"
    q = np.load(gallery / read_manifest(gallery)["models"]["r18"]["path"] / "embeddings.npy")[:3]
    a, b = kd.search("r18", q, 5), ex.search("r18", q, 5)
    assert [[h["row_id"] for h in r] for r in a] == [[h["row_id"] for h in r] for r in b]


def test_snapshot_refuses_other_model(serve_artifacts):
    with pytest.raises(ArtifactMismatchError, match=r"built by model_id .* but the served checkpoint is deadbeef"):
        GallerySnapshot.load(serve_artifacts["gallery"], ["mnv3"], {"mnv3": "deadbeef"})
    with pytest.raises(ArtifactMismatchError, match=r"no index for model 'resnet50'"):
        GallerySnapshot.load(serve_artifacts["gallery"], ["resnet50"])


def test_crop_file_only_by_id(serve_artifacts):
    snap = GallerySnapshot.load(serve_artifacts["gallery"], ["mnv3"])
    first = snap.image_ids[0]
    assert snap.crop_file(first).read_bytes() == (serve_artifacts["crops"] / "crops" / f"{first}.png").read_bytes()
    for bad in ["nope.jpg", "../gallery.json", "gallery.json", "crops/" + first, "/etc/passwd"]:
        assert snap.crop_file(bad) is None


def _emb(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(1, d)).astype(np.float32)
    return v / np.linalg.norm(v)


def test_add_is_atomic_and_versioned(gallery_copy, serve_artifacts):
    ids = serve_artifacts["model_ids"]
    before = read_manifest(gallery_copy)
    snap0 = GallerySnapshot.load(gallery_copy, None, ids)
    crop = (gallery_copy / "crops" / f"{snap0.image_ids[0]}.png").read_bytes()
    e = {"mnv3": _emb(32, 1), "r18": _emb(32, 2)}

    # a failing add (wrong dimension for r18) commits nothing
    with pytest.raises(ArtifactMismatchError, match=r"embeddings for 'r18' have shape \(1, 5\), expected \(1, 32\)"):
        add_to_gallery(gallery_copy, {"mnv3": e["mnv3"], "r18": np.zeros((1, 5), np.float32)}, [7], [crop])
    with pytest.raises(ConfigError, match=r"embeddings for every gallery model, also \['r18'\]"):
        add_to_gallery(gallery_copy, {"mnv3": e["mnv3"]}, [7], [crop])
    assert read_manifest(gallery_copy) == before
    assert len(pd.read_parquet(gallery_copy / "gallery.parquet")) == before["rows"]

    out = add_to_gallery(gallery_copy, e, [4242], [crop], [[1, 2, 3, 4]])
    n = before["rows"]
    assert out == {"version": 2, "row_ids": [n], "image_ids": [f"added_{n:08d}.png"]}
    after = read_manifest(gallery_copy)
    assert after["version"] == 2 and after["rows"] == n + 1
    # the previous version's folders stay readable for replicas still loading them
    for name in ids:
        assert (gallery_copy / before["models"][name]["path"] / "index" / "index.json").is_file()
        assert after["models"][name]["path"].endswith("v000002")
    snap = GallerySnapshot.load(gallery_copy, None, ids)
    for name in ids:
        top = snap.search(name, e[name], 1)[0][0]
        assert top["image_id"] == f"added_{n:08d}.png" and top["identity"] == 4242
        assert top["distance"] == pytest.approx(0.0, abs=1e-5)
        assert set(top["attributes"].values()) == {0}  # uploads carry no labels
    assert snap.crop_file(f"added_{n:08d}.png").read_bytes() == crop
    # the old snapshot (a replica that has not reloaded yet) is untouched
    assert snap0.rows == n and snap0.search("mnv3", e["mnv3"], 1)[0][0]["row_id"] < n


def test_old_versions_pruned(gallery_copy, serve_artifacts):
    from facerec.serve.gallery import KEEP_VERSIONS

    crop = b"\xff\xd8fake"
    for i in range(KEEP_VERSIONS + 2):
        add_to_gallery(gallery_copy, {"mnv3": _emb(32, 10 + i), "r18": _emb(32, 20 + i)}, [i], [crop])
    last = 1 + KEEP_VERSIONS + 2
    versions = sorted(p.name for p in (gallery_copy / "indexes" / "mnv3").iterdir())
    assert versions == [f"v{v:06d}" for v in range(last - KEEP_VERSIONS + 1, last + 1)]
    assert json.loads((gallery_copy / "gallery.json").read_text())["rows"] == len(pd.read_parquet(gallery_copy / "gallery.parquet"))
