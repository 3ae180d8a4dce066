"""Input kinds: one way from (photo, Haar box) to a model input, checked against what reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerec.data.haar import crop_face
from facerec.data.images import decode_image, encode_png
from facerec.data.inputs import (ALIGNED_CHIP_5PT, CHIP_MEAN_RGB, HAAR_CROP, INPUT_KINDS, check_inputs_match,
                                 crop_relpath, input_kind, kind_of)
from facerec.data.transforms import test_transform
from facerec.errors import ArtifactMismatchError, ConfigError


def _photo(seed=0, h=120, w=100):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_registry_names_and_unknown_kind():
    assert INPUT_KINDS.names() == ["aligned_chip_5pt", "haar_crop"]
    with pytest.raises(ConfigError, match=r"^input_kind='mtcnn' is invalid: expected one of \['aligned_chip_5pt', 'haar_crop'\]"):
        input_kind("mtcnn")


def test_artifacts_without_a_kind_are_haar_crops():
    assert kind_of({}) is HAAR_CROP
    assert kind_of({"input_kind": "aligned_chip_5pt"}) is ALIGNED_CHIP_5PT


def test_haar_crop_is_crop_face_and_the_test_transform():
    rgb, box = _photo(), np.array([[20, 30, 40, 44]])
    (face,) = HAAR_CROP.faces(rgb, box, 64, margin=0.2)
    np.testing.assert_array_equal(face, crop_face(rgb, box[0], margin=0.2, size=64))
    torch.testing.assert_close(HAAR_CROP.tensor(face, 32), test_transform(32)(face))


def test_chip_tensor_is_raw_rgb_and_refuses_another_size():
    chip = _photo(1, 150, 150)
    x = ALIGNED_CHIP_5PT.tensor(chip, 150)
    assert x.dtype == torch.float32 and x.shape == (3, 150, 150)
    # channel-first copy of the uint8 pixels, no scaling: dlib_resnet normalises inside
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), chip.astype(np.float32))
    with pytest.raises(ArtifactMismatchError, match=r"aligned_chip_5pt input must be 150 x 150 px, got 100 x 120"):
        ALIGNED_CHIP_5PT.tensor(_photo(), 150)


def test_chip_array_is_the_tensor_without_torch():
    chip = _photo(1, 150, 150)
    a = ALIGNED_CHIP_5PT.array(chip, 150)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 150, 150) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, ALIGNED_CHIP_5PT.tensor(chip, 150).numpy())
    with pytest.raises(ArtifactMismatchError, match=r"aligned_chip_5pt input must be 150 x 150 px, got 100 x 120"):
        ALIGNED_CHIP_5PT.array(_photo(), 150)


def test_chip_training_augmentation_erases_with_the_mean_colour():
    torch.manual_seed(0)
    chip = np.zeros((150, 150, 3), np.uint8)
    tf = ALIGNED_CHIP_5PT.train_transform(150)
    erased = None
    for _ in range(20):
        x = tf(chip)
        assert x.shape == (3, 150, 150)
        changed = (x != 0).any(0)
        if changed.any():
            erased = x[:, changed]
            break
    assert erased is not None, "random erasing never fired in 20 draws at p=0.5"
    torch.testing.assert_close(erased[:, 0], torch.tensor(CHIP_MEAN_RGB, dtype=torch.float32))


def test_chip_size_is_fixed():
    assert ALIGNED_CHIP_5PT.check_size(150) == 150
    with pytest.raises(ConfigError, match=r"^crop_size=112 is invalid: expected 150: input kind aligned_chip_5pt"):
        ALIGNED_CHIP_5PT.check_size(112)
    assert HAAR_CROP.check_size(112) == 112


def test_mismatched_inputs_are_a_clear_error():
    chips = {"input_kind": "aligned_chip_5pt", "crop_size": 150}
    crops = {"crop_size": 218}  # a folder written before input kinds: Haar crops
    check_inputs_match({"input_kind": "aligned_chip_5pt", "image_size": 150}, chips, "C/crops.parquet", "m")
    check_inputs_match({"backbone": "resnet18", "image_size": 112}, crops, "C/crops.parquet", "m")  # resized: fine
    with pytest.raises(ArtifactMismatchError, match=r"C/crops.parquet holds haar_crop inputs of 218 px, but the model "
                                                    r"M needs aligned_chip_5pt inputs of 150 px; preprocess the photos "
                                                    r"for it with `facerec preprocess --input-kind aligned_chip_5pt"):
        check_inputs_match({"input_kind": "aligned_chip_5pt", "image_size": 150}, crops, "C/crops.parquet", "M")
    with pytest.raises(ArtifactMismatchError, match=r"holds aligned_chip_5pt inputs of 150 px, but the model M needs haar_crop"):
        check_inputs_match({"input_kind": "haar_crop", "image_size": 112}, chips, "C/crops.parquet", "M")


def test_stored_inputs_are_lossless():
    rgb = _photo(3)
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    assert crop_relpath("000114.jpg") == "crops/000114.jpg.png"
    assert crop_relpath("Name/Name_0001.jpg") == "crops/Name/Name_0001.jpg.png"
