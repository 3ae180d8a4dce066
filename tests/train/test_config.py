"""TrainConfig / SweepConfig validation: every bad input is refused on the driver with a message
naming the field, the value and what is expected."""

from __future__ import annotations

import pytest

from facerec.errors import ConfigError, DataNotFoundError
from facerec.train.config import SweepConfig, TrainConfig
from facerec.train.data import prepare_data
from facerec.train.presets import PRESETS, build_sweep


def test_valid_config_round_trips(tiny_crops):
    cfg = TrainConfig(data_dir=str(tiny_crops), loss="arcface", loss_params={"margin": 0.3})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
    assert cfg.replace(lr=0.01).fingerprint() != cfg.fingerprint()
    # the fault-injection hook and retry count do not change what is trained
    assert cfg.replace(max_failures=5, kill_at_epoch=2, worker_niceness=None).fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize("field,value,match", [
    ("loss", "centerloss", r"loss='centerloss' is invalid: expected one of \['arcface', 'cosface', 'normface'"),
    ("backbone", "vgg16", r"backbone='vgg16' is invalid: expected one of \['dlib_resnet', 'mobilenet_v2'"),
    ("freeze", "half", r"freeze='half' is invalid"),
    ("sampling", "random", r"sampling='random' is invalid: expected one of \['fixed_triplets', 'pk'\]"),
    ("epochs", 0, r"epochs=0 is invalid: expected a positive number of epochs"),
    ("epochs", 2.5, r"epochs=2.5 is invalid"),
    ("lr", -1e-3, r"lr=-0.001 is invalid: expected a learning rate in \(0, 1\]"),
    ("lr", float("nan"), r"lr=nan is invalid"),
    ("image_size", 16, r"image_size=16 is invalid: expected an integer number of pixels in \[32, 512\]"),
    ("k", 1, r"k=1 is invalid: expected an integer >= 2 \(images per identity"),
    ("p", True, r"p=True is invalid"),
    ("num_workers", 0, r"num_workers=0 is invalid: expected a positive number of Ray Train workers"),
    ("val_fraction", 1.5, r"val_fraction=1.5 is invalid: expected a fraction in \(0, 1\)"),
    ("split_mode", "by_age", r"split_mode='by_age' is invalid: expected one of \['random', 'official'\]"),
    ("score_attribute", "val_loss", r"score_attribute='val_loss' is invalid"),
    ("max_failures", -2, r"max_failures=-2 is invalid: expected an integer >= -1"),
    ("kill_at_epoch", 1, r"kill_at_epoch=1 is invalid: expected None or an epoch >= 2"),
    ("worker_niceness", -5, r"worker_niceness=-5 is invalid: expected None \(Ray's default\) or an integer nice value in \[0, 19\]"),
    ("loss_params", {"scale": 10}, r"triplet.scale=10 is invalid: expected a parameter of the triplet loss"),
])
def test_bad_fields_raise_config_error(tiny_crops, field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(data_dir=str(tiny_crops), **{field: value})


def test_loss_parameter_range_is_checked_by_the_loss(tiny_crops):
    with pytest.raises(ConfigError, match=r"margin=-0.1 is invalid: expected a number >= 0"):
        TrainConfig(data_dir=str(tiny_crops), loss="triplet", loss_params={"margin": -0.1})


def test_fixed_triplets_only_with_triplet_loss(tiny_crops):
    with pytest.raises(ConfigError, match=r"sampling='fixed_triplets' is invalid: expected 'pk' for loss='arcface'"):
        TrainConfig(data_dir=str(tiny_crops), loss="arcface", sampling="fixed_triplets")


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"data_dir='.*nowhere' is not a folder: pass a preprocessed folder"):
        TrainConfig(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"crops.parquet not found: data_dir=.* is not a preprocessed folder"):
        TrainConfig(data_dir=str(tmp_path))


def test_pk_larger_than_data_is_refused_before_training(tiny_crops):
    # 12 identities x 6 images; split 10% val / 20% test leaves fewer than 12 training identities.
    cfg = TrainConfig(data_dir=str(tiny_crops), p=12, k=4)
    with pytest.raises(ConfigError, match=r"p=12 is invalid: expected at most \d+: only \d+ of \d+ training identities "
                                          r"have >= k=4 images, split over num_workers=1"):
        prepare_data(cfg)
    with pytest.raises(ConfigError, match=r"k=7 is invalid: expected at most 6, the most images any training identity has"):
        prepare_data(TrainConfig(data_dir=str(tiny_crops), p=2, k=7))
    # more workers -> fewer identities each
    n_train = prepare_data(TrainConfig(data_dir=str(tiny_crops), p=2, k=2)).counts["train_identities"]
    with pytest.raises(ConfigError, match=rf"p=4 is invalid: expected at most {n_train // 3}: .* num_workers=3"):
        prepare_data(TrainConfig(data_dir=str(tiny_crops), p=4, k=2, num_workers=3))


def test_prepare_data_is_identity_disjoint_and_labels_train_identities(tiny_crops):
    data = prepare_data(TrainConfig(data_dir=str(tiny_crops), p=2, k=2, num_workers=2))
    train_ids, val_ids = set(data.train["identity"]), set(data.val["identity"])
    assert train_ids and val_ids and not train_ids & val_ids
    assert data.num_classes == len(train_ids)
    assert sorted(data.train["label"].unique()) == list(range(len(train_ids)))
    # an identity's images all go to one worker; both workers get identities
    assert data.train.groupby("identity")["shard"].nunique().max() == 1
    assert set(data.train["shard"]) == {0, 1}


def test_sweep_grid_and_presets(tiny_crops, tmp_path):
    base = TrainConfig(data_dir=str(tiny_crops))
    sweep = SweepConfig(train=base, out_dir=str(tmp_path), losses=["triplet", "softmax"], backbones=["resnet18"],
                        margins=[0.1, 0.3])
    names = [n for n, _ in sweep.trial_configs()]
    # softmax has no margin: one trial; triplet: one per margin
    assert names == ["triplet-resnet18-m0.1", "triplet-resnet18-m0.3", "softmax-resnet18"]
    cfgs = dict(sweep.trial_configs())
    assert cfgs["triplet-resnet18-m0.3"].loss_params == {"margin": 0.3}
    with pytest.raises(ConfigError, match=r"backbone='alexnet' is invalid"):
        SweepConfig(train=base, out_dir=str(tmp_path), backbones=["alexnet"])
    with pytest.raises(ConfigError, match=r"losses=\['triplet', 'triplet'\] is invalid: expected a non-empty list"):
        SweepConfig(train=base, out_dir=str(tmp_path), losses=["triplet", "triplet"])
    assert set(PRESETS.names()) >= {"smoke", "seed", "cpu"}
    seed = build_sweep("seed", str(tiny_crops), str(tmp_path))
    epochs = {c.backbone: c.epochs for _, c in seed.trial_configs()}
    assert epochs == {"resnet50": 10, "mobilenet_v2": 23}
    assert all(c.image_size == 218 and c.sampling == "fixed_triplets" for _, c in seed.trial_configs())
    cpu = build_sweep("cpu", str(tiny_crops), str(tmp_path), {"epochs": 2, "image_size": 96})
    assert len(cpu.trial_configs()) == 12
    assert {(c.epochs, c.image_size) for _, c in cpu.trial_configs()} == {(2, 96)}
    with pytest.raises(ConfigError, match=r"preset='huge' is invalid: expected one of \['cpu', 'face', 'face-gpu', 'face-smoke', 'seed', 'smoke'\]"):
        build_sweep("huge", str(tiny_crops), str(tmp_path))


def test_relative_paths_are_made_absolute_on_the_driver(tiny_crops, tmp_path, monkeypatch):
    # Ray Train workers run in their own working directory: a relative path must not reach them.
    monkeypatch.chdir(tiny_crops.parent)
    cfg = TrainConfig(data_dir=tiny_crops.name)
    assert cfg.data_dir == str(tiny_crops)
    sweep = SweepConfig(train=cfg, out_dir="run", losses=["softmax"], backbones=["mobilenet_v3_small"])
    assert sweep.out_dir == str(tiny_crops.parent / "run")
