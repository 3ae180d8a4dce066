"""Train/test transforms: exact normalisation, resizing, erasing and region-dropout geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.errors import ConfigError, ImageDecodeError
from facerec.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RegionDropout, test_transform, to_batch, train_transform

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_test_transform_normalises_exactly_at_native_size():
    assert IMAGENET_MEAN == tuple(MEAN) and IMAGENET_STD == tuple(STD)
    img = _random_image(64, 64)
    out = test_transform(64)(img)
    assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
    expected = ((img / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_test_transform_resizes_any_shape_to_square():
    img = np.full((90, 70, 3), (10, 128, 250), dtype=np.uint8)
    out = test_transform(48)(img)
    assert out.shape == (3, 48, 48)
    # a constant image stays constant under bilinear resizing
    expected = (np.array([10, 128, 250]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(1, 2)).numpy(), 0, atol=1e-5)
    assert test_transform()(img).shape == (3, 218, 218)  # study default


def test_pil_input_equals_numpy_input():
    img = _random_image(40, 50, seed=1)
    tf = test_transform(32)
    torch.testing.assert_close(tf(Image.fromarray(img)), tf(img))
    gray = Image.fromarray(img[:, :, 0])  # PIL images are converted to RGB
    assert tf(gray).shape == (3, 32, 32)


def test_train_transform_with_augmentations_off_equals_test_transform():
    img = _random_image(64, 64, seed=2)
    plain = train_transform(64, erasing_p=0.0, region_dropout_p=0.0)
    torch.testing.assert_close(plain(img), test_transform(64)(img))


def _zero_mask(x):
    zero = x == 0
    assert torch.equal(zero[0], zero[1]) and torch.equal(zero[1], zero[2])  # same region in every channel
    return zero[0]


def test_random_erasing_geometry():
    img = np.full((64, 64, 3), 200, dtype=np.uint8)  # normalised value is never 0
    tf = train_transform(64, erasing_p=1.0, region_dropout_p=0.0)
    torch.manual_seed(0)
    for _ in range(30):
        zero = _zero_mask(tf(img))
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        h, w = rows.numel(), cols.numel()
        assert h > 0 and w > 0
        assert zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # one solid rectangle
        assert int(zero.sum()) == h * w
        assert 0.02 * 64 * 64 * 0.8 <= h * w <= 0.33 * 64 * 64 * 1.2  # area range, up to rounding
        assert 0.3 / 1.5 <= h / w <= 3.3 * 1.5  # aspect range, up to rounding


def test_region_dropout_zeroes_whole_grid_cells():
    x = torch.ones(3, 64, 64)
    drop = RegionDropout(p=1.0, grid=4, cells=4)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        zero = _zero_mask(drop(x))
        cells = zero.reshape(4, 16, 4, 16).permute(0, 2, 1, 3).reshape(16, 256)
        per_cell = cells.sum(1)
        assert set(per_cell.tolist()) <= {0, 256}  # each cell fully kept or fully dropped
        assert int((per_cell == 256).sum()) == 4
        seen.add(tuple(torch.nonzero(per_cell).flatten().tolist()))
    assert len(seen) > 10  # cells are drawn at random
    assert torch.equal(x, torch.ones(3, 64, 64))  # input not modified in place
    # uneven size: cells still tile the image exactly
    odd = RegionDropout(p=1.0, grid=3, cells=9)(torch.ones(1, 10, 11))
    assert torch.equal(odd, torch.zeros(1, 10, 11))


def test_augmentation_probabilities():
    img = np.full((32, 32, 3), 200, dtype=np.uint8)
    torch.manual_seed(0)
    draws = 400
    erased = sum(bool((train_transform(32, region_dropout_p=0.0)(img) == 0).any()) for _ in range(draws))
    dropped = sum(bool((train_transform(32, erasing_p=0.0)(img) == 0).any()) for _ in range(draws))
    # binomial(400, p): 4 standard deviations either side
    assert abs(erased / draws - 0.5) < 4 * np.sqrt(0.25 / draws)
    assert abs(dropped / draws - 0.3) < 4 * np.sqrt(0.21 / draws)


def test_to_batch():
    images = [_random_image(40, 40, seed=s) for s in range(3)]
    batch = to_batch(images, test_transform(32))
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[2], test_transform(32)(images[2]))
    with pytest.raises(ConfigError, match=r"images='\[\]' is invalid: expected at least one image"):
        to_batch([], test_transform(32))


def test_bad_inputs():
    tf = test_transform(32)
    with pytest.raises(ImageDecodeError, match=r"expected an H x W x 3 uint8 RGB array, got shape \(20, 20\) dtype uint8"):
        tf(np.zeros((20, 20), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"got shape \(20, 20, 3\) dtype float32"):
        tf(np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ImageDecodeError, match=r"got shape \(20, 20, 4\)"):
        tf(np.zeros((20, 20, 4), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"or a PIL image, got bytes; decode bytes with facerec.data.images.decode_image"):
        tf(b"\xff\xd8")
    with pytest.raises(ConfigError, match=r"size=0 is invalid"):
        test_transform(0)
    with pytest.raises(ConfigError, match=r"erasing_p=1.5 is invalid: expected a probability in \[0, 1\]"):
        train_transform(erasing_p=1.5)
    with pytest.raises(ConfigError, match=r"erasing_scale=\(0.5, 0.2\) is invalid"):
        train_transform(erasing_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match=r"region_dropout_cells=17 is invalid: expected an integer in \[1, grid\*\*2 = 16\]"):
        train_transform(region_dropout_cells=17)


@pytest.fixture(params=["synthetic", pytest.param("real", marks=pytest.mark.shared)])
def face_photo(request):
    """The first photo of the synthetic faces or of ../shared/data/celeba-sample."""
    root = request.getfixturevalue("synthetic_faces")["root"] if request.param == "synthetic" else (
        request.getfixturevalue("celeba_sample"))
    return sorted((root / "img_celeba").glob("*.jpg"))[0]


def test_face_photo(face_photo):
    path = face_photo
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
        pil = np.asarray(im.convert("RGB").resize((96, 96), Image.BILINEAR)).astype(np.float64)
    out = train_transform(96)(rgb)
    assert out.shape == (3, 96, 96) and torch.isfinite(out).all()
    ref = test_transform(96)(rgb)
    # un-normalised back to 0..255: PIL's antialiased bilinear resize, an independent implementation,
    # agrees within one grey level (rounding)
    back = ref * torch.tensor(STD, dtype=torch.float32)[:, None, None] + torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    diff = np.abs(back.permute(1, 2, 0).numpy() * 255 - pil)
    assert diff.max() <= 1.01 and diff.mean() < 0.5
