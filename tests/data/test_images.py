"""Safe decoding: every real way a photo file can be bad becomes ImageDecodeError with a
drop-manifest reason; unusual but valid encodings (grayscale, RGBA, 16-bit, CMYK, EXIF-rotated)
decode to the right RGB pixels; a decompression bomb is refused from its header."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facerec.data.images import DEFAULT_MAX_PIXELS, decode_image, encode_jpeg, read_image
from facerec.errors import ImageDecodeError


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _two_colour(h: int = 40, w: int = 60) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (200, 30, 40)
    rgb[:, w // 2:] = (20, 180, 90)
    return rgb


def _noise_jpeg(seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    return _encode(Image.fromarray(rgb), "JPEG", quality=90)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@lru_cache(maxsize=None)
def png_bomb(side: int = 20_000) -> bytes:
    """A complete, valid 1-bit grayscale PNG of side x side black pixels: ~50 KB on disk,
    side**2 pixels (400 million by default) once decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    rows_per_chunk = 1000
    idat = b"".join(comp.compress(row * min(rows_per_chunk, side - i)) for i in range(0, side, rows_per_chunk))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _reason(data: bytes, **kw) -> tuple[str, str]:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    return info.value.reason, str(info.value)


# --------------------------------------------------------------------------- bad files


def test_zero_byte_file():
    assert _reason(b"", source="a.jpg") == ("unreadable", "a.jpg: empty file (0 bytes)")


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.95])
def test_truncated_jpeg(fraction):
    data = _noise_jpeg()
    reason, message = _reason(data[: int(len(data) * fraction)], source="t.jpg")
    assert reason == "unreadable"
    assert message.startswith("t.jpg: ") and "truncated" in message.lower()


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file with a .jpg name\n")
    # the message says what the file starts with, as text a person reads (no Python bytes repr),
    # and never an object address (stable across runs)
    with pytest.raises(ImageDecodeError,
                       match=r'notes\.jpg: not a recognised image format \(JPEG, PNG, WebP, GIF, BMP or TIFF\); '
                             r'it starts with the text "this is "$') as info:
        read_image(path)
    assert info.value.reason == "unreadable"


def test_binary_junk_is_described_in_hex():
    with pytest.raises(ImageDecodeError, match=r"^blob: not a recognised image format .*; its first bytes are 00 ff 10 80 01 02 03 04$"):
        decode_image(bytes([0, 255, 16, 128, 1, 2, 3, 4, 5, 6]), source="blob")


def test_garbage_after_valid_header():
    data = bytearray(_noise_jpeg())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)  # scan data zeroed: decodes to something or fails
    try:
        out = decode_image(bytes(data))
    except ImageDecodeError as e:
        assert e.reason == "unreadable"
    else:
        assert out.shape == (200, 300, 3) and out.dtype == np.uint8


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.jpg: file not found") as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing"
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match=r"dir\.jpg: is a directory") as info:
        read_image(tmp_path / "dir.jpg")
    assert info.value.reason == "unreadable"


def test_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


# --------------------------------------------------------------------------- decompression bombs


def test_bomb_refused_by_pil_header_check():
    data = png_bomb()
    assert len(data) < 200_000  # tiny on disk...
    reason, message = _reason(data, source="bomb.png")
    assert reason == "too_large"  # ...400 MP declared: refused before a pixel is allocated
    # PIL's own text ("decompression bomb DOS attack") is not shown: what was too large, and the limit
    assert message == "bomb.png: 400,000,000 pixels exceeds the limit of 40,000,000 pixels; send a smaller image"


def test_pixel_limit_refuses_before_decoding():
    # under PIL's own bomb threshold but over ours: refused by the configured limit, from the header
    rgb = np.zeros((100, 100, 3), np.uint8)
    data = _encode(Image.fromarray(rgb), "PNG")
    reason, message = _reason(data, max_pixels=9_999, source="x.png")
    assert reason == "too_large"
    assert message == "x.png: 100x100 = 10,000 pixels exceeds the limit of 9,999 pixels; send a smaller image"
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)  # the limit is inclusive
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_bomb_memory_stays_small(tmp_path):
    # In a fresh interpreter, so the peak RSS measured is this decode's and not an earlier test's.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb())
    script = (
        "import json, resource, sys\n"
        "from facerec.data.images import read_image\n"
        "from facerec.errors import ImageDecodeError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_image(sys.argv[1]); reason = None\n"
        "except ImageDecodeError as e:\n"
        "    reason = e.reason\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'reason': reason, 'delta_kb': after - before}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["reason"] == "too_large"
    assert result["delta_kb"] < 200 * 1024  # decoding would need 400 MB (L) to 1.2 GB (RGB)


# --------------------------------------------------------------------------- valid but unusual


def test_rgb_jpeg_and_png_round_trip():
    rgb = _two_colour()
    out = decode_image(_encode(Image.fromarray(rgb), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, rgb)
    out = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95))
    np.testing.assert_allclose(out[20, 10], (200, 30, 40), atol=6)  # channel order is RGB, not BGR
    np.testing.assert_allclose(out[20, 50], (20, 180, 90), atol=6)


def test_encode_jpeg_round_trip():
    rgb = _two_colour()
    out = decode_image(encode_jpeg(rgb, quality=95))
    np.testing.assert_allclose(out[20, 10], (200, 30, 40), atol=6)
    np.testing.assert_allclose(out[20, 50], (20, 180, 90), atol=6)


def test_grayscale_becomes_three_equal_channels():
    gray = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (5, 1))
    out = decode_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (5, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_palette_png():
    rgb = _two_colour()
    out = decode_image(_encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "PNG"))
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[20, 10], (200, 30, 40))


def test_rgba_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:5, :, 3] = 0      # fully transparent (colour underneath must not show)
    rgba[5:8, :, 3] = 255   # opaque
    rgba[8:, :, 3] = 128    # half transparent
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:5], 255)
    np.testing.assert_array_equal(out[5:8].reshape(-1, 3), np.tile([10, 20, 30], (30, 1)))
    expected_half = np.round(np.array([10, 20, 30]) * 128 / 255 + 255 * (1 - 128 / 255))
    np.testing.assert_allclose(out[9, 0], expected_half, atol=1)


def test_la_grayscale_with_alpha_composited_on_white():
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 50
    la[:2, :, 1] = 0
    la[2:, :, 1] = 255
    out = decode_image(_encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(out[:2], 255)
    np.testing.assert_array_equal(out[2:], 50)


@pytest.mark.parametrize("writer", ["cv2", "pil"])
def test_16bit_png_scaled_to_8_bits(tmp_path, writer):
    a16 = np.zeros((4, 6), np.uint16)
    a16[0], a16[1], a16[2], a16[3] = 65535, 32896, 0, 257 * 200
    path = tmp_path / "g16.png"
    if writer == "cv2":
        assert cv2.imwrite(str(path), a16)
    else:
        Image.fromarray(a16).save(path)  # PIL writes mode I;16 -> a 16-bit grayscale PNG
    with Image.open(path) as im:  # the file really is 16-bit
        assert im.mode in ("I;16", "I")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    # value / 257 maps 0..65535 onto 0..255 (not a clip at 255)
    assert (out[0] == 255).all()
    assert (out[1] == 128).all()  # 32896 / 257 = 128.0
    assert (out[2] == 0).all()
    assert (out[3] == 200).all()


def test_16bit_colour_png(tmp_path):
    a16 = np.zeros((2, 2, 3), np.uint16)
    a16[0] = (65535, 0, 32896)  # BGR for cv2
    path = tmp_path / "c16.png"
    assert cv2.imwrite(str(path), a16)
    out = read_image(path)
    np.testing.assert_allclose(out[0, 0].astype(int), (128, 0, 255), atol=1)
    np.testing.assert_array_equal(out[1], 0)


def test_cmyk_jpeg_colour_roughly_right():
    rgb = _two_colour()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    data = _encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.shape == (40, 60, 3)
    np.testing.assert_allclose(out[20, 10].astype(int), (200, 30, 40), atol=12)
    np.testing.assert_allclose(out[20, 50].astype(int), (20, 180, 90), atol=12)


@pytest.mark.parametrize("orientation, expected_shape, white_at", [(1, (20, 40, 3), (10, 5)), (3, (20, 40, 3), (10, 35)),
                                                                   (6, (40, 20, 3), (5, 10)), (8, (40, 20, 3), (35, 10))])
def test_exif_orientation_applied(orientation, expected_shape, white_at):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # white band on the left edge of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(_encode(Image.fromarray(img), "JPEG", quality=95, exif=exif))
    assert out.shape == expected_shape
    assert out[white_at].min() > 200
    # the band is 10 px wide: the opposite end of the image is black
    far = (expected_shape[0] - 1 - white_at[0], expected_shape[1] - 1 - white_at[1])
    assert out[far].max() < 50


@pytest.fixture(params=["synthetic", pytest.param("real", marks=pytest.mark.shared)])
def face_photo(request) -> Path:
    """The first photo of the synthetic faces or of ../shared/data/celeba-sample."""
    root = request.getfixturevalue("synthetic_faces")["root"] if request.param == "synthetic" else (
        request.getfixturevalue("celeba_sample"))
    return sorted((root / "img_celeba").glob("*.jpg"))[0]


def test_sample_photo_decodes_like_libjpeg(face_photo):
    path = face_photo
    out = read_image(path)
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]  # an independent decoder (libjpeg via OpenCV)
    assert out.shape == reference.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 2.0
