"""Who may call what, from the request's headers alone: a gallery write needs the gallery token
as a bearer token (none configured: writes are disabled); with a read token configured, searches,
verifies, images and listings need it or the gallery token (none configured: they are open).
Headers only, so the :class:`~facerec.serve.middleware.UploadGate` runs these checks before it
reads a body (an unauthenticated client cannot make the server receive its uploads); the routes
run them again for direct callers.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from starlette.datastructures import Headers

from facerec.serve.http_errors import APIError


class Tokens:
    """The bearer tokens of one server, from its config (``ServeConfig`` as a dict): each given
    in the config or in the environment variable it names; an empty variable is unset."""

    def __init__(self, config: dict[str, Any]):
        self._gallery_env = config["gallery_token_env"]
        token = config.get("gallery_token") or os.environ.get(self._gallery_env) or None
        self._token = token.encode() if token else None
        read = config.get("read_token") or os.environ.get(config.get("read_token_env") or "FACEREC_READ_TOKEN") or None
        self._read_token = read.encode() if read else None

    def check_write(self, headers: Headers) -> None:
        """The gallery token of a gallery write."""
        if self._token is None:
            raise APIError(403, "writes_disabled",
                           f"gallery writes are disabled: no token configured (set gallery_token or ${self._gallery_env})")
        given = _bearer(headers, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not secrets.compare_digest(given, self._token):
            raise _wrong_token()

    def check_read(self, headers: Headers) -> None:
        """The read token (or the gallery token) of a read, when a read token is configured."""
        if self._read_token is None:
            return
        given = _bearer(headers, "this server needs a read token: send 'Authorization: Bearer <token>'")
        if not (secrets.compare_digest(given, self._read_token)
                or (self._token is not None and secrets.compare_digest(given, self._token))):
            raise _wrong_token()


def _bearer(headers: Headers, missing: str) -> bytes:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise APIError(401, "unauthorized", missing, headers={"WWW-Authenticate": "Bearer"})
    return given.strip().encode()


def _wrong_token() -> APIError:
    return APIError(401, "unauthorized", "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
