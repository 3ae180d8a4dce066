"""facerec.data.crops_cache: the one "preprocess if needed" of training and serving, on generated
photos: the second stage reuses the first's crops; what changes the content changes the key."""

from __future__ import annotations

import shutil

import pytest

from facerec.data.crops_cache import cached_crops_dir, crops_key, preprocessed, source_fingerprint
from facerec.data.preprocess import PreprocessConfig
from facerec.data.synth import generate_synthetic


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "photos", 3, 3, seed=5, progress=False)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_serving_reuses_the_crops_training_made(photos, cache, tmp_path, capsys):
    from facerec.serve.local import ensure_crops
    from facerec.train.data import resolve_data

    # Training preprocesses the photos first (local engine: no Ray needed for the check).
    first = preprocessed(photos, PreprocessConfig(engine="local"), progress=False)
    assert first.parent == cache / "crops" and (first / "crops.parquet").is_file()
    stamp = (first / "crops.parquet").stat().st_mtime_ns
    capsys.readouterr()
    # The server asks for the same photos in the same input kind (its engine differs: not in the key).
    served = ensure_crops(tmp_path / "serve-work", data=photos, preprocess_engine="ray", input_kind="haar_crop")
    trained = resolve_data(str(photos), input_kind="haar_crop")
    assert served == trained == first
    assert (first / "crops.parquet").stat().st_mtime_ns == stamp  # not made again
    assert "preprocessing" not in capsys.readouterr().out
    assert not (tmp_path / "serve-work").exists()  # no second copy under the server's workdir


def test_what_changes_the_content_changes_the_key(photos, cache, tmp_path):
    base = PreprocessConfig()
    key = crops_key(photos, base)
    assert crops_key(photos, PreprocessConfig(engine="local", batch_size=4)) == key  # speed only
    for other in (PreprocessConfig(input_kind="aligned_chip_5pt"), PreprocessConfig(crop_size=128),
                  PreprocessConfig(several_faces="drop"), PreprocessConfig(min_images_per_identity=3),
                  PreprocessConfig(detector="haar"), PreprocessConfig(min_confidence=0.5), PreprocessConfig(min_face=40)):
        assert crops_key(photos, other) != key, other
    # other photos: a copy elsewhere, then one image more in the copy
    copy = shutil.copytree(photos, tmp_path / "copy")
    before = source_fingerprint(copy)
    assert before != source_fingerprint(photos)
    image_dir = next(p for p in copy.iterdir() if p.is_dir() and p.name.startswith("img"))
    one = next(image_dir.iterdir())
    shutil.copy(one, image_dir / ("extra" + one.suffix))
    assert source_fingerprint(copy) != before
    assert cached_crops_dir(copy, base).name.startswith("copy-")


def test_an_explicit_out_folder_is_used_and_reused(photos, cache, tmp_path):
    out = tmp_path / "mine"
    assert preprocessed(photos, PreprocessConfig(engine="local"), out=out, progress=False) == out
    stamp = (out / "crops.parquet").stat().st_mtime_ns
    assert preprocessed(photos, PreprocessConfig(engine="local"), out=out, progress=False) == out
    assert (out / "crops.parquet").stat().st_mtime_ns == stamp
    assert not (cache / "crops").exists()
