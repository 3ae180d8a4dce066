"""Convolutional trunks from torchvision, each with its feature width and its freezing policy.

The study (ResNet-50 and MobileNet-V2 fine-tuned from ImageNet) trains only the top of each
network; ``freeze="seed"`` reproduces that. ResNet-18 and MobileNet-V3-Small are the CPU-sized
stand-ins with analogous policies.

ImageNet weights are never downloaded: they are loaded from a path the caller gives, or from the
torch hub cache if a previous ``torchvision`` run left them there (see :func:`load_pretrained`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from facerec.errors import ArtifactMismatchError, DataNotFoundError
from facerec.models.spec import BACKBONES, BackboneSpec
from facerec.registry import Registry

log = logging.getLogger(__name__)


def _resnet_trunk(model: nn.Module) -> nn.Module:
    # Names kept identical to torchvision's so policies read "layer3.5", "layer4" as in the paper.
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))


def _mobilenet_trunk(model: nn.Module) -> nn.Module:
    return model.features


def _register(spec: BackboneSpec) -> None:
    BACKBONES.register(spec.name)(spec)


# ResNet-50 (He et al. 2016): stages conv1..layer3 frozen except the last bottleneck of layer3
# (layer3.5); layer4 trains -- the study's policy.
_register(
    BackboneSpec(
        name="resnet50",
        channels=2048,
        build=lambda: torchvision.models.resnet50(weights=None),
        trunk=_resnet_trunk,
        weights_enum=torchvision.models.ResNet50_Weights,
        seed_trainable=("layer3.5", "layer4"),
        classifier_prefixes=("fc.",),
    )
)
# ResNet-18: same shape of policy -- last basic block of layer3 (layer3.1) and all of layer4.
_register(
    BackboneSpec(
        name="resnet18",
        channels=512,
        build=lambda: torchvision.models.resnet18(weights=None),
        trunk=_resnet_trunk,
        weights_enum=torchvision.models.ResNet18_Weights,
        seed_trainable=("layer3.1", "layer4"),
        classifier_prefixes=("fc.",),
    )
)
# MobileNet-V2 (Sandler et al. 2018): ``features`` has 19 modules (stem, 17 inverted residuals,
# final 1x1 conv to 1280); the study trains the last 10 of them, features[9:].
_register(
    BackboneSpec(
        name="mobilenet_v2",
        channels=1280,
        build=lambda: torchvision.models.mobilenet_v2(weights=None),
        trunk=_mobilenet_trunk,
        weights_enum=torchvision.models.MobileNet_V2_Weights,
        seed_trainable=tuple(str(i) for i in range(9, 19)),
        classifier_prefixes=("classifier.",),
    )
)
# MobileNet-V3-Small (Howard et al. 2019): ``features`` has 13 modules (stem, 11 bneck blocks,
# final 1x1 conv to 576); train the last three bneck blocks and the final conv, features[9:],
# i.e. the same top ~third of the network as the MobileNet-V2 policy.
_register(
    BackboneSpec(
        name="mobilenet_v3_small",
        channels=576,
        build=lambda: torchvision.models.mobilenet_v3_small(weights=None),
        trunk=_mobilenet_trunk,
        weights_enum=torchvision.models.MobileNet_V3_Small_Weights,
        seed_trainable=tuple(str(i) for i in range(9, 13)),
        classifier_prefixes=("classifier.",),
    )
)


# --- freezing policies ------------------------------------------------------------------------

FREEZE_POLICIES: Registry[Callable[[BackboneSpec], "tuple[str, ...] | None"]] = Registry("freeze")
"""``freeze`` name -> function(spec) giving the trainable trunk submodules (None: all train)."""

FREEZE_POLICIES.register("seed")(lambda spec: spec.seed_trainable)
FREEZE_POLICIES.register("none")(lambda spec: None)
# Only the last module the study's policy trains (dlib_resnet: its final fc layer; ResNets: layer4):
# a pretrained face model fine-tuned on a few thousand photos keeps everything it learned below.
FREEZE_POLICIES.register("last")(lambda spec: spec.seed_trainable[-1:])


def apply_freeze(trunk: nn.Module, spec: BackboneSpec, freeze: str) -> None:
    """Set ``requires_grad`` on the trunk's parameters according to the named policy."""
    trainable = FREEZE_POLICIES.get(freeze)(spec)
    if trainable is None:
        for p in trunk.parameters():
            p.requires_grad_(True)
        return
    known = dict(trunk.named_modules())
    missing = [t for t in trainable if t not in known]
    if missing:  # a policy naming a module that does not exist would silently freeze everything
        raise RuntimeError(f"freeze policy of {spec.name} names unknown modules {missing}")
    for name, p in trunk.named_parameters():
        p.requires_grad_(any(name == t or name.startswith(t + ".") for t in trainable))


# --- ImageNet weights, never downloaded ------------------------------------------------------


def hub_weight_paths(name: str) -> list[Path]:
    """Where torchvision would have cached each ImageNet weight file of backbone ``name``
    (``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``), DEFAULT first."""
    spec = BACKBONES.get(name)
    enum = spec.weights_enum
    if enum is None:
        return []
    ordered = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / os.path.basename(urlparse(w.url).path) for w in ordered]


def _load_into(model: nn.Module, state: object, spec: BackboneSpec, path: Path) -> None:
    if not isinstance(state, dict):
        raise ArtifactMismatchError(
            f"{path}: expected a state dict of a torchvision {spec.name}, got a {type(state).__name__}; "
            f"save one with torch.save(torchvision.models.{spec.name}(...).state_dict(), PATH)"
        )
    result = model.load_state_dict(state, strict=False)
    # The ImageNet classifier is discarded anyway, so a file without it is acceptable.
    missing = [k for k in result.missing_keys if not k.startswith(spec.classifier_prefixes)]
    if missing or result.unexpected_keys:
        raise ArtifactMismatchError(
            f"{path} does not fit a torchvision {spec.name}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]}); pass the ImageNet state dict of {spec.name} "
            f"(from torchvision.models.{spec.weights_enum.__name__})"
        )


def _read_state(path: Path, spec: BackboneSpec):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a damaged file
        raise ArtifactMismatchError(
            f"{path} could not be read as a torch state dict of {spec.name} ({exc.__class__.__name__}: {exc})"
        ) from exc


def load_pretrained(model: nn.Module, name: str, weights: str | os.PathLike | None) -> str:
    """Load ImageNet weights into the full torchvision ``model``; return the ``init`` label.

    ``weights`` given: that file must exist and fit, the label is its path. Otherwise the hub
    cache is searched (:func:`hub_weight_paths`); a hit gives ``"imagenet"``, a miss logs a
    warning and leaves the random initialisation (``"random"``). Nothing is downloaded.
    """
    spec = BACKBONES.get(name)
    if spec.load_weights is not None:
        return spec.load_weights(model, weights)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise DataNotFoundError(
                f"weights file {path} for {name} not found; pass the path of a torchvision "
                f"{name} ImageNet state dict (e.g. {hub_weight_paths(name)[0].name}), or omit --weights"
            )
        _load_into(model, _read_state(path, spec), spec, path)
        return str(path)
    candidates = hub_weight_paths(name)
    for path in candidates:
        if path.is_file():
            _load_into(model, _read_state(path, spec), spec, path)
            log.info("loaded ImageNet weights for %s from %s", name, path)
            return "imagenet"
    log.warning(
        "ImageNet weights for %s not found in %s; starting from random init. To start from ImageNet, copy "
        "%s (a torchvision %s state dict) into that folder, or give its path as the weights (facerec "
        "train-sweep --weights PATH).",
        name,
        candidates[0].parent,
        candidates[0].name,
        name,
    )
    return "random"


# dlib_resnet registers itself in BACKBONES (facerec.models.spec) when imported; imported here so
# that every reader of the registry through this module sees the default model however it was
# reached: ``facerec.models`` no longer imports its submodules eagerly.
import facerec.models.dlib_resnet  # noqa: E402,F401  (registers "dlib_resnet")
