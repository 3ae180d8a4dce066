"""The one JSON parser of the API's request bodies: limits on nesting, on the digits of a
number and on the count of arrays/objects, and a message saying what is wrong.

Python's ``json`` alone answers a body of 100,000 nested ``[`` with a RecursionError and a number
of 5,000 digits with a ValueError (its 4,300-digit limit on ``int``): both reached the client as
500s, and pydantic's parser answered 422 for the same bodies. Every route that takes JSON parses
it here; a body that is not acceptable JSON is a :class:`JSONBodyError`, answered 400 ``bad_json``.

The limits are checked on the bytes before ``json.loads`` builds anything, with C-speed scans
(``bytes.count``/``translate``/``find``, numpy): a 6 MB gallery body costs ~10 ms more than
``json.loads`` alone, and a body built to be expensive is refused before it allocates.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

#: Arrays/objects inside one another. The API's bodies need 2 (an object holding a list).
MAX_DEPTH = 20
#: Digits of one number (sign, point and exponent not counted): an identity has at most 16.
MAX_NUMBER_DIGITS = 100
#: Arrays and objects in one body (the API's have at most 2): 3 million small arrays in a 12 MB
#: search body took json.loads 4.4 s and hundreds of MB of the Ingress before any check.
MAX_CONTAINERS = 1000

# Every byte that can be part of a number becomes "0", every other byte "x": a run of "0" longer
# than any number under the limit can be written with (digits, sign, point, exponent letter and
# sign) is a number over the limit -- or harmless text inside a string (base64 holds digits, "+",
# "e"), which the exact check then tells apart.
_NUMBERISH = bytes(48 if c in b"-+.eE0123456789" else 120 for c in range(256))
_LONG_RUN = b"0" * (MAX_NUMBER_DIGITS + 5)
# What the depth scan keeps: quotes and brackets (escaped quotes and backslashes removed first).
_NOT_STRUCTURAL = bytes(c for c in range(256) if c not in b'"[]{}')
_CHUNK = 1 << 22  # the depth scan's numpy arrays stay at a few MB whatever the body's size
_DIGIT = re.compile(r"[0-9]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONBodyError(ValueError):
    """A body that is not acceptable JSON; ``str(exc)`` says what and where."""


def parse_json(body: bytes | str) -> Any:
    """The value of a JSON request body (UTF-8), or JSONBodyError: not UTF-8, not JSON (with line
    and column), arrays/objects nested deeper than :data:`MAX_DEPTH`, or a number of more than
    :data:`MAX_NUMBER_DIGITS` digits."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONBodyError(f"body is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                            f"send JSON encoded as UTF-8") from None
    # Only a body with more brackets than the depth limit can break either limit.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        deepest, containers = _structure(raw)
        if deepest > MAX_DEPTH:
            raise JSONBodyError(_too_deep())
        if containers > MAX_CONTAINERS:
            raise JSONBodyError(f"body has too many arrays and objects ({containers:,}; the limit is {MAX_CONTAINERS:,})")
    hooks: dict[str, Any] = {}
    if raw.translate(_NUMBERISH).find(_LONG_RUN) >= 0:  # rare: then every number is checked as it is parsed
        hooks = {"parse_int": _parse_int, "parse_float": _parse_float}
    try:
        value = json.loads(text, **hooks)
    except JSONBodyError:
        raise
    except RecursionError:  # not expected after the depth scan; kept so it can never be a 500
        raise JSONBodyError(_too_deep()) from None
    except json.JSONDecodeError as exc:
        raise JSONBodyError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    # json accepts "\ud800" alone: half a character, which no UTF-8 file (a display name in
    # gallery.json) can hold later; pydantic's parser refuses it too. Only such a body is walked.
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise JSONBodyError("body is not valid JSON: a \\u escape of half a character (a lone UTF-16 surrogate); "
                            "send the character itself or both halves of its pair")
    return value


def _check_digits(text: str) -> str:
    n = len(_DIGIT.findall(text))
    if n > MAX_NUMBER_DIGITS:
        shown = text if len(text) <= 24 else f"{text[:12]}...{text[-6:]}"
        raise JSONBodyError(f"body has a number with too many digits ({n:,} in {shown}; the limit is "
                            f"{MAX_NUMBER_DIGITS} digits)")
    return text


def _parse_int(text: str) -> int:
    return int(_check_digits(text))


def _parse_float(text: str) -> float:
    return float(_check_digits(text))


def _structure(raw: bytes) -> tuple[int, int]:
    """How deep arrays and objects nest in a JSON text, and how many there are, brackets inside
    strings not counted. Exact for valid JSON (``json.loads`` refuses an invalid body after it)."""
    # In a string, "\\" and '\"' are the only escapes that hide a quote or a backslash; removed
    # pairwise from the left, as JSON reads them, every remaining quote opens or closes a string.
    kept = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURAL)
    codes = np.frombuffer(kept, dtype=np.uint8)
    depth = deepest = containers = 0
    in_string = 0
    for start in range(0, len(codes), _CHUNK):
        a = codes[start:start + _CHUNK]
        quotes = np.cumsum(a == ord('"'), dtype=np.int32)  # int32: a chunk is far below 2**31
        inside = ((quotes + in_string) & 1).astype(bool)
        opens = ((a == ord("[")) | (a == ord("{"))) & ~inside
        step = opens.astype(np.int8) - (((a == ord("]")) | (a == ord("}"))) & ~inside).astype(np.int8)
        levels = np.cumsum(step, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        containers += int(np.count_nonzero(opens))
        depth, in_string = int(levels[-1]), (in_string + int(quotes[-1])) & 1
    return deepest, containers


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _too_deep() -> str:
    return f"body is nested too deeply: arrays and objects more than {MAX_DEPTH} levels inside one another (the limit)"
