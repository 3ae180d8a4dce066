"""Checkpoint round trip, content hash, and the errors for missing or damaged checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.models import build_embedder, load_embedder, read_checkpoint_metadata, save_checkpoint

META = {"image_size": 64, "data_version": "dv-1", "loss": "arcface", "epoch": 3}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = build_embedder("mobilenet_v3_small", embedding_dim=16, pretrained=False)
    with torch.no_grad():  # move away from the initialisation so a rebuilt random model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()(torch.randn(4, 3, 64, 64))  # update trainable BN running stats
    return model


def test_round_trip_gives_identical_outputs(tmp_path, trained):
    meta = save_checkpoint(tmp_path / "best", trained, META)
    data = (tmp_path / "best" / "model.pt").read_bytes()
    assert meta["model_id"] == hashlib.sha256(data).hexdigest()[:12]
    on_disk = json.loads((tmp_path / "best" / "model.json").read_text())
    assert on_disk == meta
    assert on_disk["backbone"] == "mobilenet_v3_small" and on_disk["embedding_dim"] == 16
    assert on_disk["epoch"] == 3 and on_disk["init"] == "random"
    assert read_checkpoint_metadata(tmp_path / "best") == meta

    loaded, loaded_meta = load_embedder(tmp_path / "best")
    assert loaded_meta == meta and not loaded.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained.eval()(x), rtol=0, atol=0)
    # saving again gives the same bytes, hence the same id
    assert save_checkpoint(tmp_path / "again", loaded, META)["model_id"] == meta["model_id"]


def test_wrapped_model_is_saved_with_bare_keys(tmp_path, trained):
    class Wrapper(nn.Module):  # the shape of DistributedDataParallel: the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    meta = save_checkpoint(tmp_path, Wrapper(trained), META)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(not k.startswith("module.") for k in state)
    assert meta["model_id"] == save_checkpoint(tmp_path / "plain", trained, META)["model_id"]


def test_metadata_is_validated(tmp_path, trained):
    with pytest.raises(ConfigError, match=r"metadata=.* expected a dict that also has the keys \['epoch'\]"):
        save_checkpoint(tmp_path, trained, {k: v for k, v in META.items() if k != "epoch"})
    with pytest.raises(ConfigError, match=r"metadata.embedding_dim=32 is invalid: expected 16"):
        save_checkpoint(tmp_path, trained, {**META, "embedding_dim": 32})
    with pytest.raises(ConfigError, match=r"model='Linear' is invalid: expected an Embedder"):
        save_checkpoint(tmp_path, nn.Linear(2, 2), META)
    assert not (tmp_path / "model.pt").exists()


def test_missing_folder_and_files(tmp_path, trained):
    with pytest.raises(DataNotFoundError, match=r"checkpoint folder .*nowhere not found.*RUN/<trial_name>/best"):
        load_embedder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"empty/model\.json not found"):
        load_embedder(tmp_path / "empty")
    save_checkpoint(tmp_path / "ck", trained, META)
    (tmp_path / "ck" / "model.pt").unlink()
    with pytest.raises(DataNotFoundError, match=r"ck/model\.pt not found"):
        load_embedder(tmp_path / "ck")


def test_damaged_weights_are_refused(tmp_path, trained):
    ck = tmp_path / "ck"
    meta = save_checkpoint(ck, trained, META)
    data = bytearray((ck / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ck / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match=rf"model\.pt has content hash \w{{12}} but .*model\.json says model_id {meta['model_id']}"):
        load_embedder(ck)

    # truncated file whose hash was (wrongly) recorded: the hash passes, loading must not
    truncated = bytes(data[: len(data) // 3])
    (ck / "model.pt").write_bytes(truncated)
    (ck / "model.json").write_text(json.dumps({**meta, "model_id": hashlib.sha256(truncated).hexdigest()[:12]}))
    with pytest.raises(ArtifactMismatchError, match=r"model\.pt could not be loaded"):
        load_embedder(ck)


def test_weights_of_another_architecture_are_refused(tmp_path, trained):
    ck = tmp_path / "ck"
    meta = save_checkpoint(ck, trained, META)
    (ck / "model.json").write_text(json.dumps({**meta, "embedding_dim": 32}))
    with pytest.raises(ArtifactMismatchError, match=r"model\.pt does not fit a mobilenet_v3_small embedder of dimension 32"):
        load_embedder(ck)
    (ck / "model.json").write_text("{not json")
    with pytest.raises(ArtifactMismatchError, match=r"model\.json is not valid JSON"):
        load_embedder(ck)
    (ck / "model.json").write_text(json.dumps({"backbone": "resnet18"}))
    with pytest.raises(ArtifactMismatchError, match=r"model\.json lacks the keys \['embedding_dim', 'freeze', 'model_id'\]"):
        load_embedder(ck)
