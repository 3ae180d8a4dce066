"""Model input kinds (registry :data:`INPUT_KINDS`): how a detected face becomes what a model eats.

A model declares its input kind and size in its metadata (``input_kind``, ``image_size``); every
stage -- preprocess, training, gallery embedding, LFW, the Serve Embedder -- turns a photo and its
face box into that input through the one :meth:`InputKind.faces` of this module, and turns the
stored input into a tensor through :meth:`InputKind.tensor`. Stored inputs are PNG (lossless), so
a gallery row and a query of the same photo are embedded from the same pixels.

- ``haar_crop``: the study's input: a square crop around the face box (the study's: Haar's), enlarged by a margin,
  resized (``facerec.data.haar.crop_face``); tensors are ImageNet-normalised and resized to the
  model's size (``facerec.data.transforms``).
- ``aligned_chip_5pt``: dlib's aligned face chip: 5 landmarks from dlib's shape predictor
  (Kazemi & Sullivan, CVPR 2014, an ensemble of regression trees) started from the detector's box
  mapped into dlib's box convention (:attr:`InputKind.box_convention`), a
  similarity transform onto dlib's reference points, 150 x 150 px with padding 0.25
  (``facerec.dlibport``); tensors are raw RGB values 0-255, since ``dlib_resnet`` normalises them
  itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from facerec.dlibport import facts as dlib_facts
from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.registry import Registry

CROP_SUFFIX = ".png"


class InputKind:
    """One way of turning (photo, face box) into a model input. Subclasses set ``name``,
    ``default_size`` and ``fixed_size`` (True when the model cannot take any other size)."""

    name: str = ""
    default_size: int = 0
    fixed_size: bool = False
    describe: str = ""
    box_convention: str | None = None
    """The face box convention this kind's step expects (``facerec.detect.base``): None takes the
    detector's own box (the study's crop is drawn around whatever box detected the face), ``"dlib"``
    the box of dlib's detector, which dlib's shape predictor was trained on."""
    supports_numpy: bool = False
    """True when :meth:`array` makes the model input with numpy alone, so a model of this kind can
    be served without torch (through ONNX Runtime, :mod:`facerec.models.onnx_runtime`)."""

    def check_size(self, size: int) -> int:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
            raise ConfigError("crop_size", size, f"an integer >= 16 (input kind {self.name}: {self.default_size})")
        if self.fixed_size and int(size) != self.default_size:
            raise ConfigError("crop_size", size, f"{self.default_size}: input kind {self.name} is {self.describe}")
        return int(size)

    def faces(self, rgb: np.ndarray, boxes: np.ndarray, size: int, margin: float = 0.2) -> list[np.ndarray]:
        """One ``size x size x 3`` uint8 input per face box (x, y, w, h) of ``rgb``, in :attr:`box_convention`."""
        raise NotImplementedError

    def faces_many(self, images: Sequence[np.ndarray], boxes: Sequence, size: int, margin: float = 0.2) -> list[np.ndarray]:
        """One input per (image, box) pair; subclasses batch the work across images."""
        return [self.faces(img, np.asarray(box).reshape(1, 4), size, margin)[0] for img, box in zip(images, boxes)]

    def array(self, image: np.ndarray, size: int) -> np.ndarray:
        """Deterministic ``3 x size x size`` float32 numpy array of a stored input, numpy only
        (serving without torch); only kinds with ``supports_numpy`` implement it."""
        raise NotImplementedError(f"input kind {self.name} has no numpy path; serve it with torch (runtime='torch')")

    def tensor(self, image: np.ndarray, size: int):
        """Deterministic ``3 x size x size`` float32 tensor of a stored input (evaluation, serving)."""
        raise NotImplementedError

    def train_transform(self, size: int) -> Callable:
        """Randomly augmented tensor of a stored input (training)."""
        raise NotImplementedError


INPUT_KINDS: Registry[InputKind] = Registry("input_kind")


def _register(kind: InputKind) -> InputKind:
    INPUT_KINDS.register(kind.name)(kind)
    return kind


class HaarCrop(InputKind):
    name = "haar_crop"
    default_size = 218
    describe = "a square crop around the face box, the study's input (218 px)"

    def faces(self, rgb, boxes, size, margin=0.2):
        from facerec.data.haar import crop_face

        return [crop_face(rgb, b, margin=margin, size=size) for b in np.asarray(boxes).reshape(-1, 4)]

    def array(self, image, size):
        raise NotImplementedError(
            f"input kind {self.name} has no numpy path: the Haar crop's resize and ImageNet normalisation "
            f"(facerec.data.transforms.test_transform) need torch; a {self.name} model is served with runtime='torch'"
        )

    def tensor(self, image, size):
        return _haar_test_transform(size)(image)

    def train_transform(self, size):
        from facerec.data.transforms import train_transform

        return train_transform(size)


@functools.lru_cache(maxsize=8)
def _haar_test_transform(size: int):
    from facerec.data.transforms import test_transform

    return test_transform(size)


# dlib's face chip and the mean colour of its training images: facts of dlib_resnet
# (facerec.dlibport.facts), under the names this module has always given them.
CHIP_SIZE = dlib_facts.CHIP_SIZE
CHIP_PADDING = dlib_facts.CHIP_PADDING
CHIP_MEAN_RGB = dlib_facts.MEAN_RGB


@functools.lru_cache(maxsize=1)
def shape_predictor():
    """dlib's 5-point landmark model, loaded once per process (it is ~9 MB of trees)."""
    from facerec.dlibport.shape_predictor import ShapePredictor

    return ShapePredictor.load()


class AlignedChip5pt(InputKind):
    name = dlib_facts.INPUT_KIND
    default_size = CHIP_SIZE
    fixed_size = True
    describe = "dlib's 5-point aligned face chip, 150 x 150 px, padding 0.25"
    box_convention = "dlib"  # the shape predictor starts from dlib's detector box
    supports_numpy = True  # the chip goes in as raw RGB values: no resize, no normalisation

    def faces(self, rgb, boxes, size, margin=0.2):
        boxes = np.asarray(boxes).reshape(-1, 4)
        return self.faces_many([rgb] * len(boxes), list(boxes), size, margin)

    def faces_many(self, images, boxes, size, margin=0.2):
        from facerec.dlibport.chip import extract_face_chip
        from facerec.dlibport.shape_predictor import rect_from_xywh

        self.check_size(size)
        if len(images) == 0:
            return []
        rects = [rect_from_xywh(*(int(round(float(v))) for v in np.asarray(b).reshape(4))) for b in boxes]
        landmarks = shape_predictor().predict_many(list(images), rects)
        return [extract_face_chip(img, pts, size=CHIP_SIZE, padding=CHIP_PADDING) for img, pts in zip(images, landmarks)]

    def array(self, image, size):
        """The chip's channels-first copy as float32 (``dlib_resnet`` normalises raw RGB itself)."""
        from facerec.data.images import to_uint8_chw

        x = to_uint8_chw(image)
        if tuple(x.shape[1:]) != (size, size):
            raise ArtifactMismatchError(
                f"an {self.name} input must be {size} x {size} px, got {x.shape[2]} x {x.shape[1]}: it was not made "
                f"by `facerec preprocess --input-kind {self.name}`"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def tensor(self, image, size):
        import torch

        # One implementation of the chip's input: the torch and ONNX Runtime paths embed the same values.
        return torch.from_numpy(self.array(image, size))

    def train_transform(self, size):
        from torchvision import transforms as T

        def base(image):
            return self.tensor(image, size)

        # Mirror faces and hide a random patch with the mean colour (Zhong et al. 2020); the chip
        # is already aligned, so no crop or scale jitter that would undo the alignment.
        return T.Compose([base, T.RandomHorizontalFlip(0.5),
                          T.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3), value=list(CHIP_MEAN_RGB))])


HAAR_CROP = _register(HaarCrop())
ALIGNED_CHIP_5PT = _register(AlignedChip5pt())


def input_kind(name: str) -> InputKind:
    """The registered :class:`InputKind` called ``name`` (ConfigError listing the choices)."""
    return INPUT_KINDS.get(name)


def kind_of(meta: dict) -> InputKind:
    """The input kind an artifact's metadata declares; artifacts older than input kinds were
    ``haar_crop``."""
    return INPUT_KINDS.get(str(meta.get("input_kind") or HAAR_CROP.name))


@dataclass(frozen=True)
class InputSpec:
    """What a model needs (kind + size), compared with what a crops folder holds."""

    kind: str
    size: int

    @classmethod
    def of_model(cls, meta: dict) -> "InputSpec":
        return cls(kind_of(meta).name, int(meta.get("image_size") or kind_of(meta).default_size))

    @classmethod
    def of_crops(cls, meta: dict) -> "InputSpec":
        return cls(kind_of(meta).name, int(meta.get("crop_size") or kind_of(meta).default_size))


def check_inputs_match(model_meta: dict, crops_meta: dict, crops_where: str, model_where: str) -> None:
    """Refuse to embed crops of one input kind with a model that needs another.

    ``haar_crop`` models resize any crop to their size; ``aligned_chip_5pt`` needs the chip size."""
    need, have = InputSpec.of_model(model_meta), InputSpec.of_crops(crops_meta)
    kind = INPUT_KINDS.get(need.kind)
    if need.kind != have.kind or (kind.fixed_size and need.size != have.size):
        raise ArtifactMismatchError(
            f"{crops_where} holds {have.kind} inputs of {have.size} px, but the model {model_where} needs "
            f"{need.kind} inputs of {need.size} px; preprocess the photos for it with "
            f"`facerec preprocess --input-kind {need.kind} --data PHOTOS --out NEW_FOLDER`"
        )


def crop_relpath(image_id: str, face: int = 0) -> str:
    """Where a photo's stored input lives in a crops folder: ``crops/<image_id>.png`` (the photo's
    own name kept whole, so ``a.jpg`` and ``a.png`` never collide). ``face``: the face's number in
    its photo (0 = largest box); faces after the first (``several_faces="all"``) are
    ``crops/<image_id>.face<n>.png``, so face 0 keeps the path every crops folder has always used.
    No photo's own crop can take such a name: a photo's name ends in an image suffix, not ``.face<n>``."""
    if face:
        return f"crops/{image_id}.face{int(face)}{CROP_SUFFIX}"
    return f"crops/{image_id}{CROP_SUFFIX}"
