"""dlib's serialization primitives (``dlib/serialize.h``, ``dlib/cuda/tensor.h``) on bytes
computed by hand."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from facerec.dlibport import files
from facerec.dlibport.serialize import DlibReader
from facerec.errors import ArtifactMismatchError


def reader(data: bytes) -> DlibReader:
    return DlibReader(data, "hand.dat")


@pytest.mark.parametrize(
    "data, value",
    [
        (b"\x01\x00", 0),
        (b"\x01\x02", 2),
        (b"\x02\x2c\x01", 300),  # 300 = 0x012c: two bytes, little-endian
        (b"\x81\x05", -5),  # 0x80 marks a negative value
        (b"\x81\x1c", -28),
        (b"\x04\x00\x00\x00\x80", 2**31),
        (b"\x88" + b"\xff" * 7 + b"\x7f", -(2**63 - 1)),
    ],
)
def test_int(data, value):
    r = reader(data)
    assert r.int() == value
    assert r.at_end()


def test_float_is_mantissa_then_exponent():
    # 0.75 = 3 * 2**-2: mantissa 3, then exponent -2.
    assert reader(b"\x01\x03\x81\x02").float() == 0.75
    # loss_metric_2's margin in the model file: mantissa 0xa3d70a, exponent -28 = 0.04 as float32.
    r = reader(b"\x03\x0a\xd7\xa3\x81\x1c")
    assert r.float32() == np.float32(0.04)
    assert r.at_end()
    # 122.782 (the red mean) as float32 = 16093143 * 2**-17
    m = 16093282
    assert reader(bytes([0x03]) + m.to_bytes(3, "little") + b"\x81\x11").float32() == np.float32(122.782)
    assert reader(b"\x01\x00\x02\x00\x7d").float() == math.inf  # exponent 32000
    assert reader(b"\x01\x00\x02\x01\x7d").float() == -math.inf  # 32001
    assert math.isnan(reader(b"\x01\x00\x02\x02\x7d").float())  # 32002


def test_string_and_bool():
    r = reader(b"\x01\x05relu_10")
    assert r.string() == "relu_"
    assert r.bool() is True
    assert r.bool() is False
    assert r.at_end()
    with pytest.raises(ArtifactMismatchError, match=r"hand\.dat: at byte 0: expected a dlib bool .* got b'x'"):
        reader(b"x").bool()


def test_expect_string_leaves_position_on_mismatch():
    r = reader(b"\x01\x04fc_2")
    with pytest.raises(ArtifactMismatchError, match=r"at byte 0: expected 'fc_3', got 'fc_2'"):
        r.expect_string("fc_3")
    assert r.pos == 0
    r.expect_string("fc_2")


def test_tensor_raw_float32():
    data = b"\x01\x02" + b"\x01\x01\x01\x02\x01\x01\x01\x01" + struct.pack("<2f", 1.5, -2.0)
    r = reader(data)
    t = r.tensor()
    assert t.shape == (1, 2, 1, 1) and t.dtype == np.float32
    assert t.ravel().tolist() == [1.5, -2.0]
    assert r.at_end()
    empty = reader(b"\x01\x02" + b"\x01\x00" * 4).tensor()
    assert empty.shape == (0, 0, 0, 0)


def test_alias_tensor_is_shape_only():
    r = reader(b"\x01\x01\x01\x20\x01\x03\x01\x07\x01\x07")
    assert r.alias_tensor() == (32, 3, 7, 7)
    assert r.at_end()


def test_errors_name_file_and_offset():
    with pytest.raises(ArtifactMismatchError, match=r"hand\.dat: at byte 0: expected a dlib integer control byte, got 0x30"):
        reader(b"0").int()
    with pytest.raises(ArtifactMismatchError, match=r"hand\.dat: at byte 1: file ends early: needed 2 more bytes, 1 left"):
        reader(b"\x02\x2c").int()
    with pytest.raises(ArtifactMismatchError, match=r"at byte 0: expected a string length, got -5"):
        reader(b"\x81\x05abc").string()
    with pytest.raises(ArtifactMismatchError, match=r"at byte 0: expected a dlib tensor \(version 2\), got version 1"):
        reader(b"\x01\x01" + b"\x01\x00" * 4).tensor()
    truncated = b"\x01\x02" + b"\x01\x01\x01\x02\x01\x01\x01\x01" + struct.pack("<f", 1.5)
    with pytest.raises(ArtifactMismatchError, match=r"at byte 10: file ends early: needed 8 more bytes, 4 left \(truncated\?\)"):
        reader(truncated).tensor()
    with pytest.raises(ArtifactMismatchError, match=r"tensor with negative dimensions"):
        reader(b"\x01\x02\x81\x01" + b"\x01\x00" * 3).tensor()


def test_head_of_the_model_file():
    """The first records of dlib_face_recognition_resnet_model_v1.dat: add_loss_layer version 1,
    "loss_metric_2", margin 0.04, distance threshold 0.6, then add_layer version 2."""
    try:
        path = files.locate(files.RESNET)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    r = DlibReader.open(path)
    assert r.int() == 1
    assert r.string() == "loss_metric_2"
    assert r.float32() == np.float32(0.04)
    assert r.float32() == np.float32(0.6)
    assert r.int() == 2
