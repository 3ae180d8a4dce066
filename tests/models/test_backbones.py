"""Backbone registry, freezing policies, frozen batch-norm behaviour, head output, weight loading."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
import torchvision

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.models import BACKBONES, build_embedder, hub_weight_paths

# trainable trunk parameter prefixes under freeze="seed", written out from the study's policy
SEED_TRAINABLE = {
    "resnet50": ("layer3.5.", "layer4."),
    "resnet18": ("layer3.1.", "layer4."),
    "mobilenet_v2": tuple(f"{i}." for i in range(9, 19)),
    "mobilenet_v3_small": tuple(f"{i}." for i in range(9, 13)),
}
CHANNELS = {"resnet50": 2048, "resnet18": 512, "mobilenet_v2": 1280, "mobilenet_v3_small": 576}


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to fetch weights from the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_registry_has_the_torchvision_backbones_and_dlib():
    assert BACKBONES.names() == sorted([*CHANNELS, "dlib_resnet"])
    with pytest.raises(ConfigError, match=r"backbone='vgg16' is invalid: expected one of \['dlib_resnet', 'mobilenet_v2'"):
        build_embedder("vgg16")


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_seed_policy_freezes_exactly_the_study_layers(name):
    torch.manual_seed(0)
    model = build_embedder(name, embedding_dim=16, pretrained=False)
    assert BACKBONES.get(name).channels == CHANNELS[name]
    with torch.no_grad():
        feats = model.eval().backbone(torch.randn(1, 3, 64, 64))
    assert feats.shape[1] == CHANNELS[name]
    trainable = SEED_TRAINABLE[name]
    n_frozen = 0
    for pname, p in model.backbone.named_parameters():
        assert p.requires_grad == pname.startswith(trainable), pname
        n_frozen += not p.requires_grad
    assert n_frozen > 0
    assert all(p.requires_grad for p in model.head.parameters())


def test_resnet50_policy_specifics():
    model = build_embedder("resnet50", pretrained=False)
    params = dict(model.backbone.named_parameters())
    assert not params["conv1.weight"].requires_grad
    assert not params["layer3.4.conv3.weight"].requires_grad  # second-to-last block of layer3
    assert params["layer3.5.conv1.weight"].requires_grad  # last block of layer3
    assert params["layer4.0.conv1.weight"].requires_grad


def test_freeze_none_trains_everything_and_unknown_policy_is_rejected():
    model = build_embedder("mobilenet_v3_small", embedding_dim=8, freeze="none", pretrained=False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    with pytest.raises(ConfigError, match=r"freeze='all' is invalid: expected one of \['last', 'none', 'seed'\]"):
        build_embedder("resnet18", freeze="all", pretrained=False)


@pytest.mark.parametrize("dim", [0, -3, 2.5, True])
def test_bad_embedding_dim(dim):
    with pytest.raises(ConfigError, match=r"embedding_dim=.* expected a positive integer"):
        build_embedder("resnet18", embedding_dim=dim, pretrained=False)


def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics():
    torch.manual_seed(0)
    model = build_embedder("resnet18", embedding_dim=8, pretrained=False)
    model.eval()
    model.train()  # the override must re-freeze after a plain nn.Module.train()
    bb = dict(model.backbone.named_modules())
    assert not bb["bn1"].training and not bb["layer1.0.bn1"].training and not bb["layer3.0.bn2"].training
    assert bb["layer3.1.bn1"].training and bb["layer4.1.bn2"].training
    assert model.training and model.head.training
    frozen_before = bb["layer2.0.bn1"].running_mean.clone()
    trained_before = bb["layer4.0.bn1"].running_mean.clone()
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(bb["layer2.0.bn1"].running_mean, frozen_before)
    assert not torch.equal(bb["layer4.0.bn1"].running_mean, trained_before)
    model.eval()
    assert not bb["layer4.0.bn1"].training


def test_output_is_unit_norm_with_requested_dimension():
    torch.manual_seed(0)
    model = build_embedder("mobilenet_v3_small", embedding_dim=24, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert model.metadata == {"backbone": "mobilenet_v3_small", "embedding_dim": 24, "freeze": "seed", "init": "random",
                              "input_kind": "haar_crop"}
    # head structure is the spec's: pool -> flatten -> Linear(C,d) -> ReLU -> Linear(d,d)
    assert (model.head.fc1.in_features, model.head.fc1.out_features) == (576, 24)
    assert (model.head.fc2.in_features, model.head.fc2.out_features) == (24, 24)


def _reference_resnet18(tmp_path, drop_fc=False):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    if drop_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return state


@pytest.mark.parametrize("drop_fc", [False, True])
def test_weights_path_is_loaded(tmp_path, drop_fc):
    state = _reference_resnet18(tmp_path, drop_fc)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = build_embedder("resnet18", weights=path)
    assert model.metadata["init"] == str(path)
    got = model.backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(got[key], state[key])


def test_weights_path_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(ArtifactMismatchError, match=rf"{path} does not fit a torchvision resnet18: \d+ missing keys"):
        build_embedder("resnet18", weights=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ArtifactMismatchError, match=rf"{garbage} could not be read as a torch state dict of resnet18"):
        build_embedder("resnet18", weights=garbage)


def test_missing_weights_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"weights file .*nope\.pth for resnet18 not found.*resnet18-f37072fd\.pth"):
        build_embedder("resnet18", weights=tmp_path / "nope.pth")


def test_hub_cache_is_used_without_download(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    paths = hub_weight_paths("resnet18")
    assert paths[0] == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's DEFAULT url file name

    # The warning as a user's process logs it: in a fresh interpreter, whose logging no earlier
    # in-process test has touched (in the full suite the record once never reached caplog).
    code = ("import logging, torch; logging.basicConfig(level=logging.WARNING)\n"
            f"torch.hub._hub_dir = {str(tmp_path)!r}\n"
            "from facerec.models import build_embedder\n"
            "print(build_embedder('resnet18', embedding_dim=8).metadata['init'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "random"
    assert f"ImageNet weights for resnet18 not found in {tmp_path / 'checkpoints'}; starting from random init" in out.stderr
    # names the training CLI's flag, not one of a command that has none (facerec serve)
    assert "give its path as the weights (facerec train-sweep --weights PATH)" in out.stderr
    assert "Pass --weights" not in out.stderr
    model = build_embedder("resnet18", embedding_dim=8)
    assert model.metadata["init"] == "random"

    state = _reference_resnet18(tmp_path)
    paths[0].parent.mkdir(parents=True)
    torch.save(state, paths[0])
    model = build_embedder("resnet18", embedding_dim=8)
    assert model.metadata["init"] == "imagenet"
    assert torch.equal(model.backbone.state_dict()["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    # pretrained=False skips the cache even when the file is there
    assert build_embedder("resnet18", embedding_dim=8, pretrained=False).metadata["init"] == "random"
