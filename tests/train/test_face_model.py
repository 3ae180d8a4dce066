"""Fine-tuning dlib_resnet: checks against the crops' input kind, and a real Ray Train run that
trains only the top of the network."""

from __future__ import annotations

import pytest
import torch

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.train.config import TrainConfig


def test_face_model_needs_chips_of_its_size(tiny_crops, tiny_chips):
    TrainConfig(data_dir=str(tiny_chips), backbone="dlib_resnet", image_size=150, embedding_dim=128)
    with pytest.raises(ConfigError, match=r"^image_size=112 is invalid: expected 150 for backbone dlib_resnet"):
        TrainConfig(data_dir=str(tiny_chips), backbone="dlib_resnet", image_size=112, embedding_dim=128)
    with pytest.raises(ConfigError, match=r"^embedding_dim=64 is invalid: expected 128 for backbone dlib_resnet"):
        TrainConfig(data_dir=str(tiny_chips), backbone="dlib_resnet", image_size=150, embedding_dim=64)
    with pytest.raises(ArtifactMismatchError, match=r"holds haar_crop inputs of 40 px, but the model backbone "
                                                    r"dlib_resnet needs aligned_chip_5pt inputs of 150 px"):
        TrainConfig(data_dir=str(tiny_crops), backbone="dlib_resnet", image_size=150, embedding_dim=128)
    with pytest.raises(ArtifactMismatchError, match=r"holds aligned_chip_5pt inputs of 150 px, but the model backbone "
                                                    r"resnet18 needs haar_crop"):
        TrainConfig(data_dir=str(tiny_chips), backbone="resnet18")


def test_loss_lr_is_validated(tiny_chips):
    with pytest.raises(ConfigError, match=r"^loss_lr=0 is invalid: expected None \(same as lr\)"):
        TrainConfig(data_dir=str(tiny_chips), backbone="dlib_resnet", image_size=150, embedding_dim=128, loss_lr=0)


def test_face_presets_are_dlib_on_chips(tiny_chips, tmp_path):
    from facerec.train.presets import build_sweep

    for preset in ("face", "face-smoke"):
        sweep = build_sweep(preset, str(tiny_chips), str(tmp_path), {"p": 2, "k": 2})
        trials = sweep.trial_configs()
        assert [c.loss for _, c in trials] == ["triplet", "softmax", "normface", "sphereface", "cosface", "arcface"]
        assert {(c.backbone, c.image_size, c.freeze, c.lr, c.loss_lr) for _, c in trials} == {
            ("dlib_resnet", 150, "last", 1e-4, 1e-3)}


@pytest.mark.slow
def test_fine_tuning_trains_only_the_top(ray_local, tiny_chips, tmp_path):
    from facerec.dlibport.resnet import load_dlib_resnet_state
    from facerec.models import load_embedder
    from facerec.train.trainer import train

    cfg = TrainConfig(data_dir=str(tiny_chips), backbone="dlib_resnet", loss="softmax", image_size=150,
                      embedding_dim=128, freeze="seed", lr=1e-5, loss_lr=1e-4, epochs=1, steps_per_epoch=2,
                      p=2, k=2, val_max_images=None, val_fraction=0.3, test_fraction=0.2, cpus_per_worker=2,
                      max_failures=0)
    row = train(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["epochs"] == 1
    model, meta = load_embedder(tmp_path / "run" / "softmax-dlib_resnet" / "best")
    assert meta["backbone"] == "dlib_resnet" and meta["input_kind"] == "aligned_chip_5pt" and meta["init"] == "dlib"
    pretrained = load_dlib_resnet_state()
    tuned = {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}
    for name in ("stem.conv.weight", "layer1.0.conv1.weight", "layer3.2.affine2.gamma"):
        torch.testing.assert_close(tuned[name], pretrained[name], rtol=0, atol=0)  # frozen: bit-identical
    moved = [n for n in ("layer4.0.conv1.weight", "layer5.0.conv2.weight", "fc.weight")
             if not torch.equal(tuned[n], pretrained[n])]
    assert moved == ["layer4.0.conv1.weight", "layer5.0.conv2.weight", "fc.weight"]
