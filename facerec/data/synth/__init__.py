"""Synthetic CelebA: procedurally drawn faces in the official CelebA folder layout.

The real pipeline (Haar cropping -> metric learning -> retrieval) needs photos of many people,
several photos each, with identity and attribute labels. This package draws such a set with
numpy + OpenCV so the whole system runs on a fresh machine with no download (its folder: see
:mod:`~facerec.data.synth.writer`).

Every identity has its own geometry (face shape and width, jaw, eye spacing and size, brow
thickness and arch, nose length and width, mouth width and lips, skin tone, hair colour and
style, glasses, beard) and every image its own nuisance (in-plane rotation, shift and scale,
lighting gradient and brightness, expression, background colour and texture, clothes, blur,
sensor noise, JPEG quality). Identity ranges are several times wider than within-identity
jitter so a small CNN can tell people apart, as in the CelebA identity protocol of
Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015.

The drawing is tuned so that OpenCV's pretrained frontal-face Haar cascade (Viola & Jones,
"Rapid Object Detection using a Boosted Cascade of Simple Features", CVPR 2001; Lienhart &
Maydt, ICIP 2002), run as the preprocess stage runs it (scale 1.1, 5 neighbours, 24 px), finds
exactly one face in ~98% of images (97.9-98.6% over seeds 0-4 at the defaults; the real
celeba-sample gets ~84%). The cascade's features are dark eye bands under a lighter forehead,
a light nose bridge between darker eyes, a dark mouth line and the cheek outline against the
background, so those contrasts are drawn on purpose: shaded eye sockets, a lit bridge, light
cheeks, proportions inside the range of real faces, and a background whose brightness differs
from the skin's. Each identity is also screened once: a neutral photo the cascade misses
means the person is redrawn (about 1 in 40).

The package, one concept per module: :mod:`~facerec.data.synth.identity` (who is drawn and what
changes per photo), :mod:`~facerec.data.synth.render` (drawing one photo) and
:mod:`~facerec.data.synth.writer` (the dataset on disk, with the identities' Haar screening).
"""

from facerec.data.synth.identity import Identity, Shot, passport_shot, sample_identity, sample_shot, shot_attributes
from facerec.data.synth.render import encode_jpeg, render
from facerec.data.synth.writer import (
    ATTR_FILE,
    IDENTITY_FILE,
    IMAGE_DIR,
    MARKER_FILE,
    PARTITION_FILE,
    SYNTH_VERSION,
    SynthConfig,
    count_faces,
    default_synthetic_dir,
    draw_identity,
    ensure_synthetic,
    generate_synthetic,
    image_name,
    is_complete,
    screening_detector,
)

__all__ = [
    "ATTR_FILE", "IDENTITY_FILE", "IMAGE_DIR", "MARKER_FILE", "PARTITION_FILE", "SYNTH_VERSION", "Identity", "Shot",
    "SynthConfig", "count_faces", "default_synthetic_dir", "draw_identity", "encode_jpeg", "ensure_synthetic",
    "generate_synthetic", "image_name", "is_complete", "passport_shot", "render", "sample_identity", "sample_shot",
    "screening_detector", "shot_attributes",
]
