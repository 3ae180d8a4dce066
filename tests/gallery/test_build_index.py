"""The build-index stage (facerec.gallery.build_index, run through pipelines/build_index.py):
embeddings + indexes with their metadata, readable by serving, refused when reloaded for another
model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.gallery import load_embeddings, load_saved_index
from facerec.gallery.build_index import BuildIndexConfig

PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "build_index.py"


def _pipeline():
    spec = importlib.util.spec_from_file_location("build_index_pipeline", PIPELINE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gallery(ray_local, tiny_crops, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery") / "g"
    rc = _pipeline().main(["--crops", str(tiny_crops), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                           "--kinds", "kdtree,exact", "--num-actors", "1", "--batch-size", "8"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_writes_embeddings_and_indexes_with_metadata(gallery, tiny_crops, tiny_checkpoint, helpers):
    from facerec.data.schema import load_crops
    from facerec.models import read_checkpoint_metadata

    model_id = read_checkpoint_metadata(tiny_checkpoint)["model_id"]
    manifest = json.loads((gallery / "gallery.json").read_text())
    entry = manifest["models"]["resnet18"]
    assert manifest["rows"] == 32 and manifest["data_version"] == helpers.DATA_VERSION
    assert entry["model_id"] == model_id and entry["index_kind"] == "kdtree"
    assert entry["extra_kinds"] == ["exact"]
    assert set(manifest["segments"][0]["indexes"]["resnet18"]) == {"kdtree", "exact"}

    table, emb, meta = load_embeddings(gallery, expected_model_id=model_id)
    assert meta["model_id"] == model_id and meta["embedding_dim"] == 16
    assert meta["data_version"] == helpers.DATA_VERSION
    assert {"row_id", "image_id", "source_id", "identity", "crop_path", "Smiling", "Young"} <= set(table.columns)

    df, _ = load_crops(tiny_crops)
    # served ids are random; the crops folder's names are kept as source_id, in order
    assert list(table["source_id"]) == list(df["image_id"]) and list(table["row_id"]) == list(range(32))
    assert table["image_id"].nunique() == 32 and not set(table["image_id"]) & set(df["image_id"])
    ref = helpers.reference_embeddings(tiny_checkpoint, [tiny_crops / p for p in df["crop_path"]])
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_array_equal(np.load(gallery / "segments" / "s000001" / "emb-resnet18.npy"), emb)
    assert all((gallery / p).is_file() for p in table["crop_path"])

    for kind in ("kdtree", "exact"):
        index = load_saved_index(gallery, kind=kind, expected_model_id=model_id, expected_dim=16)
        d, ids = index.search(emb[[5, 17]], 3)
        assert list(ids[:, 0]) == [5, 17]
        np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-3)
        brute = np.sort(np.linalg.norm(emb[5] - emb, axis=1))[:3]
        np.testing.assert_allclose(d[0], brute, atol=1e-4)


@pytest.mark.slow
def test_reloading_for_another_model_fails_clearly(gallery, tiny_checkpoint):
    from facerec.gallery import GallerySnapshot

    with pytest.raises(ArtifactMismatchError, match="embedded by model_id .* but model_id 0123456789ab was expected"):
        load_saved_index(gallery, expected_model_id="0123456789ab")
    with pytest.raises(ArtifactMismatchError, match="but model_id 0123456789ab was expected"):
        load_embeddings(gallery, expected_model_id="0123456789ab")
    with pytest.raises(ArtifactMismatchError, match="embedding_dim 16 but 128 was expected"):
        load_saved_index(gallery, expected_dim=128)
    with pytest.raises(ArtifactMismatchError, match="has indexes \\['kdtree', 'exact'\\], not 'hnsw'"):
        load_saved_index(gallery, kind="hnsw")
    # Serving reads the same folder and applies the same rule.
    snap = GallerySnapshot.load(gallery)
    hits = snap.search("resnet18", np.load(gallery / "segments" / "s000001" / "emb-resnet18.npy")[:1], 2)
    assert hits[0][0]["row_id"] == 0
    with pytest.raises(ArtifactMismatchError, match="served checkpoint is 0123456789ab"):
        GallerySnapshot.load(gallery, expected_model_ids={"resnet18": "0123456789ab"})


@pytest.mark.slow
def test_existing_gallery_needs_overwrite(gallery, tiny_crops, tiny_checkpoint, capsys):
    # the command turns the ConfigError into one line on stderr and exit code 2
    assert _pipeline().main(["--crops", str(tiny_crops), "--checkpoint", str(tiny_checkpoint), "--out", str(gallery)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_test_split_refuses_checkpoint_of_other_crops(tiny_crops, tiny_checkpoint, tmp_path):
    from facerec.gallery.build_index import build_gallery_index

    other = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, other)
    meta = json.loads((other / "model.json").read_text())
    meta["data_version"] = "elsewhere"
    (other / "model.json").write_text(json.dumps(meta))
    cfg = BuildIndexConfig(crops_dir=str(tiny_crops), out_dir=str(tmp_path / "g"), checkpoints={"r": str(other)},
                           split="test")
    with pytest.raises(ArtifactMismatchError, match="data_version elsewhere but the crops folder has data_version"):
        build_gallery_index(cfg)
    assert not (tmp_path / "g" / "gallery.json").exists()


def test_config_is_validated(tiny_crops, tmp_path, capsys):
    base = {"crops_dir": str(tiny_crops), "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="at least one --checkpoint"):
        BuildIndexConfig(**base)
    with pytest.raises(ConfigError, match="index kind='annoy'"):
        BuildIndexConfig(initial=["resnet18"], kinds=["annoy"], **base)
    with pytest.raises(ConfigError, match="split='val'"):
        BuildIndexConfig(initial=["resnet18"], split="val", **base)
    assert _pipeline().main(["--crops", str(tiny_crops), "--initial", "--out", str(tmp_path / "x")]) == 2
    assert "--initial=True" in capsys.readouterr().err


def test_ray_engine_is_registered_by_the_gallery_package():
    """``build_gallery(engine="ray")`` works in a fresh interpreter that imported only
    facerec.gallery: the engine is the gallery's own, registered without importing eval (once it
    was registered as a side effect of importing facerec.eval), Ray or torch."""
    code = ("import sys\n"
            "from facerec.gallery import EMBED_ENGINES, GalleryBuildConfig\n"
            "GalleryBuildConfig(crops_dir='c', out_dir='o', checkpoints={'m': 'dlib_resnet'}, engine='ray')\n"
            "print(EMBED_ENGINES.names())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch') or m.startswith('facerec.eval')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    engines, loaded = out.stdout.strip().splitlines()[-2:]
    assert "'ray'" in engines and "'local'" in engines, engines
    assert loaded == "[]", loaded

