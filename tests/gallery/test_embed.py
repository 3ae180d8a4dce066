"""embed_crops on a real local Ray cluster gives, row for row, what the model computes in this
process one image at a time; the embedding options are one validated set shared by every config
that embeds."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import ConfigError, DataNotFoundError
from facerec.gallery.embed import EmbedConfig, EmbeddingOptions, embed_crops, embed_crops_with_stats


@pytest.fixture(scope="module")
def table(tiny_crops):
    from facerec.data.schema import load_crops

    df, _ = load_crops(tiny_crops)
    # A shuffled order: the output must follow the table, not file or identity order.
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(table, tiny_crops, tiny_checkpoint, helpers):
    return helpers.reference_embeddings(tiny_checkpoint, [tiny_crops / p for p in table["crop_path"]])


@pytest.mark.slow
def test_checkpoint_on_actor_pool_matches_in_process_forward(ray_local, table, tiny_crops, tiny_checkpoint, reference):
    # batch 5 over 32 rows: 7 batches, the last one short; two 1-CPU actors share them.
    emb = embed_crops(table, tiny_crops, tiny_checkpoint, batch_size=5, num_actors=2, progress=False)
    assert emb.shape == (len(table), 16) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The embeddings are not all alike, so a permuted row would have been caught above.
    assert np.abs(reference[0] - reference[1:]).max() > 1e-2


@pytest.mark.slow
def test_in_memory_model_and_separate_decode_stage(ray_local, table, tiny_crops, tiny_checkpoint, reference):
    from facerec.models import load_embedder

    model, meta = load_embedder(tiny_checkpoint)
    cfg = EmbedConfig(batch_size=8, num_actors=1, separate_decode=True, progress=False)
    emb, stats = embed_crops_with_stats(table, tiny_crops, model, cfg, image_size=int(meta["image_size"]))
    np.testing.assert_allclose(emb, reference, atol=1e-5)
    assert stats["images"] == len(table) and stats["device"] == "cpu" and stats["actors"] == 1
    assert stats["images_per_second"] > 0


@pytest.mark.slow
def test_missing_crop_file_is_reported_before_any_work(table, tiny_crops, tiny_checkpoint):
    bad = table.copy()
    bad.loc[3, "crop_path"] = "crops/not_there.jpg"
    with pytest.raises(DataNotFoundError, match=r"1 of 32 crop files are missing .*not_there\.jpg"):
        embed_crops(bad, tiny_crops, tiny_checkpoint)


@pytest.mark.slow
def test_bad_inputs_name_the_field(table, tiny_crops, tmp_path):
    with pytest.raises(ConfigError, match="batch_size=0"):
        EmbedConfig(batch_size=0)
    with pytest.raises(ConfigError, match="num_actors=-1"):
        EmbedConfig(num_actors=-1)
    with pytest.raises(ConfigError, match="crop_path"):
        embed_crops(table.drop(columns="crop_path"), tiny_crops, tmp_path)
    with pytest.raises(DataNotFoundError, match="not a checkpoint folder"):
        embed_crops(table, tiny_crops, tmp_path)


def test_the_embedding_options_are_one_validated_set(tmp_path):
    """batch_size, num_actors and use_gpu: the same fields, defaults and checks in every config that
    embeds crops (each a subclass of EmbeddingOptions), refused before anything starts."""
    from facerec.eval.calibrate import CalibrateConfig
    from facerec.eval.tables import TablesConfig
    from facerec.gallery.build import GalleryBuildConfig
    from facerec.gallery.build_index import BuildIndexConfig

    base = {"crops_dir": str(tmp_path), "out_dir": str(tmp_path / "out")}
    make = {
        EmbedConfig: dict,
        GalleryBuildConfig: lambda **kw: {**base, "checkpoints": {"m": "dlib_resnet"}, **kw},
        BuildIndexConfig: lambda **kw: {**base, "checkpoints": {"m": "dlib_resnet"}, **kw},
        TablesConfig: lambda **kw: {**base, "backbones": ["resnet18"], **kw},
        CalibrateConfig: dict,
    }
    for cls, fields in make.items():
        assert issubclass(cls, EmbeddingOptions)
        cfg = cls(**fields())
        assert (cfg.batch_size, cfg.num_actors, cfg.use_gpu) == (64, None, None)
        assert cls(**fields(batch_size=8, num_actors=2, use_gpu=False)).embed_config() == \
            EmbedConfig(batch_size=8, num_actors=2, use_gpu=False)
        for field, bad in (("batch_size", 0), ("num_actors", 0), ("use_gpu", "yes")):
            with pytest.raises(ConfigError, match=f"{field}={bad!r}"):
                cls(**fields(**{field: bad}))

