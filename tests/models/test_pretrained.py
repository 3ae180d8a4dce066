"""dlib_resnet as a backbone, and pretrained checkpoints by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerec.errors import ConfigError
from facerec.models import build_embedder, load_embedder, read_checkpoint_metadata
from facerec.models.pretrained import (MEASURED_FILE, PRETRAINED, is_untrained, model_card, pretrained_checkpoint,
                                       record_measurement, resolve_checkpoint)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_dlib_backbone_gives_dlibs_raw_descriptors():
    from facerec.dlibport.resnet import build_dlib_resnet

    model = build_embedder("dlib_resnet", 128, freeze="none").eval()
    assert model.metadata["init"] == "dlib" and model.metadata["input_kind"] == "aligned_chip_5pt"
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 150, 150)).astype(np.float32))
    with torch.inference_mode():
        raw = build_dlib_resnet()(x)
        out = model(x)
    torch.testing.assert_close(out, raw)  # not normalised: Euclidean distances are dlib's own
    assert ((out.norm(dim=1) > 1.0) & (out.norm(dim=1) < 2.0)).all()


def test_dlib_backbone_has_a_fixed_dimension_and_freezes_its_lower_blocks():
    with pytest.raises(ConfigError, match=r"^embedding_dim=64 is invalid: expected 128: dlib_resnet ends in its own"):
        build_embedder("dlib_resnet", 64)
    model = build_embedder("dlib_resnet", 128, freeze="seed", pretrained=False)
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable == {"layer4", "layer5", "fc"}
    assert frozen == {"stem", "layer1", "layer2", "layer3"}


def test_pretrained_name_becomes_a_checkpoint_once(cache):
    assert PRETRAINED.names() == ["dlib_resnet"]
    folder = resolve_checkpoint("dlib_resnet")
    assert folder.startswith(str(cache))
    meta = read_checkpoint_metadata(folder)
    assert meta["backbone"] == "dlib_resnet" and meta["image_size"] == 150 and meta["pretrained"] == "dlib_resnet"
    assert not is_untrained(meta)
    mtime = (cache / "models").stat().st_mtime_ns
    assert resolve_checkpoint("dlib_resnet") == folder  # reused, not rewritten
    model, meta2 = load_embedder(folder)
    assert meta2["model_id"] == meta["model_id"] and model.metadata["input_kind"] == "aligned_chip_5pt"
    # a damaged cache entry is rebuilt with the same weights, hence the same model_id
    (pretrained_checkpoint("dlib_resnet") / "model.json").write_text("{")
    assert read_checkpoint_metadata(resolve_checkpoint("dlib_resnet"))["model_id"] == meta["model_id"]
    assert (cache / "models").stat().st_mtime_ns >= mtime
    assert resolve_checkpoint("some/folder") == "some/folder"


def test_untrained_models_are_recognised(tmp_path):
    assert is_untrained({"backbone": "resnet50", "init": "random", "epoch": 0})
    assert is_untrained({"backbone": "resnet50", "init": "imagenet", "epoch": 0})
    assert not is_untrained({"backbone": "resnet18", "init": "random", "epoch": 3})
    assert not is_untrained({"backbone": "dlib_resnet", "epoch": 0, "pretrained": "dlib_resnet"})


def test_model_card_reports_measured_lfw(cache):
    folder = resolve_checkpoint("dlib_resnet")
    meta = read_checkpoint_metadata(folder)
    card = model_card(meta, folder)
    assert "dlib_face_recognition_resnet_model_v1.dat" in card["weights"]
    assert "7,485 identities" in card["training_data"] and card["lfw_accuracy_pct"] is None
    record_measurement(folder, "lfw", {"accuracy_pct": 98.5, "data": "lfw-sample, 3 folds"})
    assert json.loads((cache / "models" / next((cache / "models").iterdir()).name / MEASURED_FILE).read_text())["lfw"]
    card = model_card(meta, folder)
    assert card["lfw_accuracy_pct"] == 98.5 and card["lfw_measured_on"] == "lfw-sample, 3 folds"
    untrained = model_card({"backbone": "resnet50", "init": "random", "epoch": 0})
    assert untrained["untrained"] and "never trained on faces" in untrained["weights"]


def test_embedding_spread_by_hand():
    from facerec.train.loop import COLLAPSE_SPREAD, embedding_spread

    # two opposite unit vectors: centroid 0, each at distance 1 -> RMS 1
    assert embedding_spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    # (1,0) and (0,1): centroid (.5,.5), distances sqrt(.5) -> RMS sqrt(.5)
    assert embedding_spread(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(np.sqrt(0.5))
    collapsed = np.array([[1.0, 1e-9], [1.0, -1e-9], [1.0, 0.0]])
    assert embedding_spread(collapsed) < COLLAPSE_SPREAD


def test_collapse_means_training_shrank_a_spread():
    from facerec.train.loop import is_collapsed

    assert is_collapsed(0.004, 0.6)          # a pretrained embedding squeezed to a point
    assert not is_collapsed(0.2, 0.6)        # narrower, but not collapsed
    assert not is_collapsed(0.01, 0.012)     # a random initialisation starts that tight: not judged
    assert not is_collapsed(2e-9, 1e-8)
    assert is_collapsed(0.01, None)          # no initial figure: the absolute floor alone


def test_lfw_result_reaches_the_cached_pretrained_copy(cache, tmp_path):
    import shutil

    from facerec.models.pretrained import record_lfw

    cached = resolve_checkpoint("dlib_resnet")
    evaluated = tmp_path / "initial" / "dlib_resnet-s150-d128"  # what evaluate's Table 3.1 saves: same weights
    shutil.copytree(cached, evaluated)
    record_lfw(evaluated, {"mean": 0.98512, "std": 0.0031, "folds": 3, "pairs": 1800}, tmp_path / "lfw-sample")
    for folder in (evaluated, cached):
        card = model_card(read_checkpoint_metadata(folder), folder)
        assert card["lfw_accuracy_pct"] == 98.51 and card["lfw_measured_on"] == "lfw-sample, 3 folds of pairs.txt"


def test_last_policy_trains_only_the_final_layer():
    model = build_embedder("dlib_resnet", 128, freeze="last", pretrained=False)
    assert {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad} == {"fc"}
    r18 = build_embedder("resnet18", 16, freeze="last", pretrained=False)
    trainable = {n.split(".")[0] for n, p in r18.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}


def test_pretrained_input_matches_its_backbone():
    """The torch-free input kind and size of each registered pretrained model are its backbone's."""
    from facerec.models.backbones import BACKBONES
    from facerec.models.pretrained import PRETRAINED

    for name in PRETRAINED.names():
        entry, spec = PRETRAINED.get(name), BACKBONES.get(PRETRAINED.get(name).backbone)
        assert (entry.input_kind, entry.image_size) == (spec.input_kind, spec.default_image_size)
