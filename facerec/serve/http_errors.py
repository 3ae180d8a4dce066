"""How the API answers an error: one shape, ``{"detail": message, "code": code}``
(:class:`~facerec.serve.schemas.ErrorBody`), for an :class:`APIError` a route raises, for the
header checks the :class:`~facerec.serve.middleware.UploadGate` runs before a body is read
(:class:`~facerec.serve.middleware.GateRefusal`), for FastAPI's validation of query, path and
form values and for Starlette's own HTTP errors (unknown path, method not allowed).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerec.serve.middleware import GateRefusal


class APIError(GateRefusal):
    """An error answered with ``status``, ``code``, ``message`` (and ``headers``). A GateRefusal, so
    a check can raise it both in a route and in the UploadGate before the body is read."""


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "code": code}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: GateRefusal) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default answers a list of pydantic errors; the API has one shape for every 4xx.
    return error_response(422, "bad_parameter", validation_message(exc.errors()))


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type"}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such path {request.url.path!r}; the API is under /v1/ (see /docs)"
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message,
                          getattr(exc, "headers", None))


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the API's one shape."""
    app.add_exception_handler(GateRefusal, _api_error)  # APIError included
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


_WHERE = {"query": "query parameter ", "body": "field ", "path": "path parameter ", "header": "header "}


def validation_message(errors: list[dict[str, Any]]) -> str:
    """``query parameter k: Input should be greater than or equal to 1 (got '0')``, one per error."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        where = _WHERE.get(loc[0], "") if loc else ""
        name = ".".join(loc[1:] if where else loc) or "body"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, UploadFile)) or got is None and e.get("type") == "missing" else \
            f" (got {short(got)})"
        parts.append(f"{where}{name}: {e['msg']}{shown}")
    return "; ".join(parts)


def short(value: Any, n: int = 60) -> str:
    """A received value as the message shows it: JSON's spelling of booleans, cut at ``n`` characters."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as the client wrote it (JSON), not Python's True
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."
