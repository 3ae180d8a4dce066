"""Reader of dlib's binary serialization (``dlib/serialize.h``), the format of its ``.dat`` files.

- Integers: one control byte whose low 4 bits give the byte count and whose bit 0x80 marks a
  negative value, then that many little-endian magnitude bytes.
- Floating point (``float_details``): the int64 mantissa, then the int16 exponent, both as
  integers above; value = mantissa * 2**exponent, with exponents 32000/32001/32002 meaning
  +inf/-inf/NaN. (The comment in ``serialize.h`` lists them the other way round; the code
  serializes the mantissa first.)
- ``std::string``: its length as an integer, then the bytes.
- ``bool``: one ASCII byte, ``'1'`` or ``'0'``.
- ``dlib::tensor`` (``dlib/cuda/tensor.h``): version 2, then num_samples, k, nr, nc as integers,
  then the values as raw little-endian float32 (not ``float_details``). An ``alias_tensor``
  (a view into a layer's ``params``) stores version 1 and its four dimensions, no values.

Every read names the file and byte offset on failure, so a truncated or foreign file is a clear
:class:`~facerec.errors.ArtifactMismatchError`, never a numpy traceback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from facerec.errors import ArtifactMismatchError

_INF, _NINF, _NAN = 32000, 32001, 32002


class DlibReader:
    """Sequential reader over the bytes of one dlib-serialized file."""

    def __init__(self, data: bytes, path: str | os.PathLike = "<bytes>"):
        self.data = memoryview(data)
        self.pos = 0
        self.path = str(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "DlibReader":
        return cls(Path(path).read_bytes(), path)

    def error(self, what: str) -> ArtifactMismatchError:
        return ArtifactMismatchError(f"{self.path}: at byte {self.pos}: {what}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def bytes(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"file ends early: needed {n} more bytes, {len(self.data) - self.pos} left (truncated?)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise self.error("file ends early: expected an integer (truncated?)")
        ctrl = self.data[self.pos]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self.error(f"expected a dlib integer control byte, got 0x{ctrl:02x} (not a dlib .dat file?)")
        self.pos += 1
        value = int.from_bytes(self.bytes(size), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def float32(self) -> np.float32:
        # dlib converts float_details back to float with ldexp in long double; rounding the
        # exact value once to float32 gives the same bits.
        return np.float32(self.float())

    def string(self) -> str:
        start = self.pos
        n = self.int()
        if n < 0:
            self.pos = start
            raise self.error(f"expected a string length, got {n} (not a dlib .dat file?)")
        raw = bytes(self.bytes(n))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"expected an ASCII string of {n} bytes, got {raw[:20]!r}") from None

    def expect_string(self, expected: str) -> None:
        start = self.pos
        got = self.string()
        if got != expected:
            self.pos = start
            raise self.error(f"expected {expected!r}, got {got!r}")

    def bool(self) -> bool:
        ch = bytes(self.bytes(1))
        if ch not in (b"0", b"1"):
            self.pos -= 1
            raise self.error(f"expected a dlib bool ('0' or '1'), got {ch!r}")
        return ch == b"1"

    def _dims(self, what: str) -> tuple[int, int, int, int]:
        dims = tuple(self.int() for _ in range(4))
        if min(dims) < 0:
            raise self.error(f"{what} with negative dimensions {dims}")
        return dims

    def tensor(self) -> np.ndarray:
        """A ``dlib::resizable_tensor``, as a float32 array of shape (num_samples, k, nr, nc)."""
        start = self.pos
        version = self.int()
        if version != 2:
            self.pos = start
            raise self.error(f"expected a dlib tensor (version 2), got version {version}")
        dims = self._dims("tensor")
        return self.raw_float32(math.prod(dims)).reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """A ``dlib::alias_tensor``: only its shape (num_samples, k, nr, nc) is stored."""
        start = self.pos
        version = self.int()
        if version != 1:
            self.pos = start
            raise self.error(f"expected a dlib alias_tensor (version 1), got version {version}")
        return self._dims("alias_tensor")

    def float32_array(self, n: int) -> np.ndarray:
        """``n`` consecutive dlib-serialized floats (e.g. a ``std::vector<float>``'s items)."""
        return np.array([self.float() for _ in range(n)], dtype=np.float32)

    def raw_float32(self, n: int) -> np.ndarray:
        """``n`` raw little-endian float32 values (how ``dlib::tensor`` stores its data)."""
        return np.frombuffer(self.bytes(4 * n), dtype="<f4").copy()
