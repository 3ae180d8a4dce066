"""Reading a request: its content type, a JSON body (the API's one parser,
:mod:`facerec.serve.jsonbody`), a payload validated as a schema, a base64 photo, an identity or a
gallery image id. Each refusal is an :class:`~facerec.serve.http_errors.APIError` saying what was
received and what is accepted.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from facerec.gallery.format import IDENTITY_MAX
from facerec.serve.http_errors import APIError, short, validation_message
from facerec.serve.jsonbody import JSONBodyError, parse_json

_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_WHITESPACE = re.compile(r"\s+")
_JSON_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def decode_b64(text: Any, field: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise APIError(422, "bad_parameter", f"{field} must be a string of base64 text (got {json_type(text)})")
    if not text:
        raise APIError(400, "empty", f"{field} is empty; send the photo as base64 text")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    # `base64` and most encoders wrap their output at 76 columns: line breaks and spaces are layout.
    text = _WHITESPACE.sub("", text)
    if len(text) > limit * 4 // 3 + 4:
        raise APIError(413, "too_large", f"{field} decodes to more than the limit of {limit:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "bad_base64", f"{field} is not valid base64 ({exc})") from None
    if not data:
        raise APIError(400, "empty", f"{field} decodes to 0 bytes")
    return data


def json_type(value: Any) -> str:
    """The JSON name of a parsed JSON value's type, as the client wrote it."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def json_body(body: bytes) -> Any:
    """A request body parsed by the API's one JSON parser (limits: :mod:`facerec.serve.jsonbody`)."""
    try:
        return parse_json(body)
    except JSONBodyError as exc:
        raise APIError(400, "bad_json", str(exc)) from None


def validated(model: type[BaseModel], payload: Any) -> Any:
    """``payload`` (a parsed JSON body) as ``model``, or 422 ``bad_parameter`` naming each field."""
    if not isinstance(payload, dict):
        raise APIError(422, "bad_parameter", f"body: a JSON object with the fields {sorted(f.alias or n for n, f in model.model_fields.items())} "
                                             f"expected (got {json_type(payload)})")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise APIError(422, "bad_parameter", validation_message(exc.errors())) from None


def check_path_identity(identity: int) -> None:
    if not 0 <= identity <= IDENTITY_MAX:
        raise APIError(422, "bad_parameter", f"identity must be an integer in [0, {IDENTITY_MAX}] (got {identity})")


def check_image_id(image_id: str) -> None:
    if not _IMAGE_ID.match(image_id) or ".." in image_id:
        raise APIError(400, "bad_image_id", f"{image_id!r} is not a gallery image id (letters, digits, '_', '-', '.')")


def parse_identity(value: Any, form: bool = False) -> int:
    """The one reading of an identity, for JSON (``value`` parsed: an integer, not a boolean) and
    form fields (``form``: the text of an integer as JSON writes it, so ``1_000``, ``42.0``,
    ``+7`` or ``007`` are refused there as in JSON). 422 ``bad_parameter`` outside [0, IDENTITY_MAX]."""
    name = "field identity" if form else "identity"  # as FastAPI names a form field, pydantic a JSON one
    if form:
        if not (isinstance(value, str) and len(value) <= 20 and _JSON_INTEGER.fullmatch(value)):
            raise APIError(422, "bad_parameter", f"{name}: Input should be a plain decimal integer, like 42 "
                                                 f"(got {short(value)})")
        shown, value = short(value), int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            raise APIError(422, "bad_parameter", f"{name}: Input should be a valid integer (got {short(value)})")
        shown = short(value)
    if value < 0:
        raise APIError(422, "bad_parameter", f"{name}: Input should be greater than or equal to 0 (got {shown})")
    if value > IDENTITY_MAX:
        raise APIError(422, "bad_parameter", f"{name}: Input should be less than or equal to {IDENTITY_MAX} (got {shown})")
    return value
