"""The HTTP front of the application: a FastAPI app behind ``@serve.ingress``, composing one
``Embedder`` deployment per model and the ``Retriever`` through DeploymentHandles.

Routes (schema at ``/docs``, ``/openapi.json``):

- ``POST /v1/search``   photo -> faces -> top-k gallery matches per face (each flagged ``same_person``
  at the model's calibrated threshold, :mod:`facerec.serve.verification`)
- ``POST /v1/verify``   two photos -> same person or not, at a calibrated false accept rate
- ``GET  /v1/images/{image_id}``  a gallery crop (looked up in the gallery by its random id; ``no-store``)
- ``POST /v1/gallery``  add photos of an identity, optionally with its display name (bearer token)
- ``DELETE /v1/gallery/images/{image_id}``, ``DELETE /v1/gallery/identities/{identity}``  forget
  them: rows, crops, embeddings and index entries of every model, in one new version, and what the
  server derived from their photos (:mod:`facerec.data.erasure`); the answer names the photo
  folder, which still holds the photos (bearer token)
- ``GET  /v1/gallery/identities`` (paged), ``PUT /v1/gallery/identities/{identity}`` (display name)
- ``POST /v1/gallery/identities/{identity}/merge`` (``{"from": other}``), ``PUT /v1/gallery/images/{image_id}/identity``
  (``{"identity": n}``): merge two people, move a face to another person (bearer token; one new version each)

With a read token configured (``read_token``), search, verify, images and listings need it too.
- ``GET  /v1/models``, ``GET /healthz``
- ``GET  /``            the web page (``static/``)

Every error, 4xx and 5xx, has one shape, ``{"detail": message, "code": code}`` (:class:`ErrorBody`),
query-string and form validation included. Request bodies pass the :class:`~facerec.serve.middleware.
UploadGate` first: a declared length over the route's limit is a 413 and a request that does not fit
in the replica's budget of upload bytes in flight a 503 with ``Retry-After``, both before a byte of
the body is read. Multipart bodies are parsed by FastAPI (``UploadFile``/``Form``) with Starlette's
form limits, JSON bodies by :func:`facerec.serve.jsonbody.parse_json` (400 ``bad_json``), and a
``Host`` outside ``allowed_hosts`` is a 400 ``bad_host`` (:class:`~facerec.serve.middleware.
HostCheck`) before anything else; every response carries the security headers of
:data:`~facerec.serve.middleware.SECURITY_HEADERS`. ``/docs`` is rendered on the server and needs no
network (:mod:`facerec.serve.docs`).
"""

# No ``from __future__ import annotations``: FastAPI must see the real types of the route
# parameters of the class (Serve copies the methods onto its own ASGI wrapper).
import asyncio
import base64
import binascii
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.serve import verification
from facerec.serve.verification import Decision, VerifyJSON, VerifyResponse
from facerec.gallery.format import IDENTITY_MAX  # JSON-safe (2**53 - 1), inside the int64 column
from facerec.serve.config import DEFAULT_ALLOWED_HOSTS, K_MAX
from facerec.serve.jsonbody import JSONBodyError, parse_json
from facerec.serve.middleware import GateRefusal, HostCheck, SecurityHeaders, UploadBudget, UploadGate

STATIC_DIR = Path(__file__).resolve().parent / "static"
_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------------------------
# Schemas (they are the OpenAPI documentation)
# --------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong and how to fix it")
    code: str = Field(description="Machine-readable reason, e.g. no_face, too_large, unknown_model")


class Box(BaseModel):
    x: int
    y: int
    w: int
    h: int


class Hit(BaseModel):
    rank: int = Field(description="1 = nearest")
    image_id: str
    row_id: int
    identity: int
    display_name: str | None = Field(None, description="The identity's display name, when one was set")
    distance: float = Field(description="Euclidean distance between the query's and this face's embeddings "
                                        "(unit-norm embeddings: in [0, 2]; dlib_resnet's raw descriptors: not bounded)")
    attributes: dict[str, int] = Field(description="The 40 CelebA attributes, -1/1 (0 = unknown)")
    attribute_agreement: float | None = Field(
        description="Share of attributes (known on both) equal to those of the rank-1 result"
    )
    thumbnail_url: str
    same_person: bool | None = Field(
        None, description="distance <= the gallery's open-set threshold (`decision`): likely the same person; null when "
                          "no threshold is known")


class FaceResult(BaseModel):
    box: Box = Field(description="Face box in the uploaded image, pixels")
    results: list[Hit]
    match: bool | None = Field(
        None, description="Whether any result is the same person (false: no match in the gallery); null when no "
                          "threshold is known. With an approximate index kind it covers the results returned")


class ImageSize(BaseModel):
    width: int
    height: int


class SearchResponse(BaseModel):
    model: str
    model_id: str
    k: int
    faces_mode: Literal["largest", "all"]
    image: ImageSize
    gallery_version: int
    faces: list[FaceResult]
    decision: Decision | None = Field(
        None, description="How `same_person` was decided: the open-set threshold of this gallery at the server's target "
                          "FPIR, with N and the method; null while none is known")
    timing_ms: dict[str, float]


class SearchParams(BaseModel):
    # strict: a JSON true is not the number 1 (form and query values arrive parsed by FastAPI)
    k: int = Field(9, ge=1, le=K_MAX, strict=True, description=f"Results per face, 1-{K_MAX}")
    model: str | None = Field(None, description="Served model name (GET /v1/models); default: the configured one")
    faces: Literal["largest", "all"] = Field("largest", description="Search with the largest face only, or every face")


class SearchJSON(SearchParams):
    image_base64: str = Field(description="The photo (JPEG/PNG/...), base64; a data: URL prefix is accepted")


class GalleryJSON(BaseModel):
    identity: int = Field(ge=0, le=IDENTITY_MAX, strict=True,
                          description=f"Identity label of the person in the photos, 0-{IDENTITY_MAX}")
    images_base64: list[str] = Field(min_length=1, description="One or more photos of that person, base64")
    display_name: str | None = Field(None, min_length=1, max_length=100,
                                      description="A display name for the identity (kept in the gallery)")


class DeleteResponse(BaseModel):
    deleted: int = Field(description="Gallery rows deleted (their crops, embeddings and index entries are gone)")
    image_ids: list[str]
    row_ids: list[int]
    identities: list[int]
    gallery_version: int = Field(description="The version in which they are gone, for every served model")
    rows: int
    photo_folder: str | None = Field(
        None, description="The photo folder the gallery was built from. It is yours and is not changed by a delete: "
                          "it still holds the original photos (the crops cache and galleries the server derived "
                          "from it are erased, and the erasure is recorded so no rebuild brings them back)")
    message: str = Field("", description="What was deleted, and what was left where (the photo folder)")


class IdentityItem(BaseModel):
    identity: int
    images: int = Field(description="Live gallery images of this identity")
    display_name: str | None = None


class IdentitiesResponse(BaseModel):
    identities: list[IdentityItem]
    total: int = Field(description="Identities in the gallery")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")
    gallery_version: int


class DisplayNameJSON(BaseModel):
    display_name: str | None = Field(min_length=1, max_length=100, description="The name to show; null removes it")


class DisplayNameResponse(BaseModel):
    identity: int
    display_name: str | None
    images: int
    gallery_version: int


class MergeJSON(BaseModel):
    from_: int = Field(alias="from", ge=0, le=IDENTITY_MAX, strict=True,
                       description="The identity whose images all become images of the identity in the path")


class MergeResponse(BaseModel):
    identity: int = Field(description="The identity that holds both now")
    merged: int = Field(description="The identity merged into it (it has no image left)")
    moved: int = Field(description="Images relabelled")
    images: int = Field(description="Images of the identity now")
    display_name: str | None = Field(description="Its display name (the merged one's, when it had none)")
    gallery_version: int = Field(description="The committed version in which they are one")


class MoveJSON(BaseModel):
    identity: int = Field(ge=0, le=IDENTITY_MAX, strict=True,
                          description="The identity the image belongs to (one with no image yet splits it off as a "
                                      "new person)")


class MoveResponse(BaseModel):
    image_id: str
    identity: int
    previous_identity: int
    images: int = Field(description="Images of the identity now")
    display_name: str | None
    gallery_version: int = Field(description="The committed version in which the image is of its new identity")


class AddWarning(BaseModel):
    image: int = Field(description="Index of the photo in the request")
    code: str = Field(description="same_photo_other_identity: these exact face crop bytes are already a row of "
                                  "another identity")
    image_id: str = Field(description="The gallery image that holds the same photo")
    identity: int = Field(description="Its identity")
    message: str


class GalleryAddResponse(BaseModel):
    added: int = Field(description="New rows: the photos minus those already in the gallery (duplicate_of)")
    identity: int
    image_ids: list[str] = Field(description="One per photo, in order: the new row, or the row a duplicate already is")
    row_ids: list[int]
    duplicate_of: list[str | None] = Field(
        description="One per photo: null for a new row, else the image_id of the row that already holds these exact "
                    "bytes for this identity (not added again)")
    gallery_version: int
    rows: int
    warnings: list[AddWarning] = Field(
        default_factory=list, description="What was added but looks like a mistake: a photo already in the gallery "
                                          "under another identity (same_photo_other_identity)")


class ModelInfo(BaseModel):
    name: str
    default: bool
    model_id: str
    backbone: str | None
    embedding_dim: int
    image_size: int
    input_kind: str = "haar_crop"
    device: str
    runtime: str | None = None
    rss_mb: float | None = None       # the replica process's resident memory (VmRSS) when asked
    peak_rss_mb: float | None = None  # and its peak (VmHWM)  # "onnx" (ONNX Runtime, no torch in the replica) or "torch"
    index_kind: str
    max_batch_size: int
    batch_wait_timeout_s: float
    weights: str | None = None
    training_data: str | None = None
    lfw_accuracy_pct: float | None = None
    lfw_measured_on: str | None = None
    untrained: bool = False
    trained_by: str | None = None
    input: str | None = None
    calibration: dict[str, Any] | None = Field(
        None, description="Verification calibration (facerec calibrate): thresholds at each calibrated false accept "
                          "rate with cross-validated TAR, EER, and the data they came from; null when uncalibrated")
    open_set: Decision | None = Field(
        None, description="How search decides 'same person' for the served gallery (as in a search's `decision`)")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    gallery_rows: int
    gallery_version: int
    attribute_names: list[str]


def _error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


# The multipart form of each body is generated by FastAPI from the UploadFile/Form parameters;
# these add the other accepted encodings (merged into the generated requestBody).
_SEARCH_BODY = {
    "requestBody": {
        "description": "The photo, as a multipart upload (field `image`), JSON with `image_base64`, or a raw "
                       "image/* body. `k`, `model`, `faces` may be form/JSON fields or query parameters.",
        "content": {
            "application/json": {"schema": SearchJSON.model_json_schema()},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_GALLERY_BODY = {
    "requestBody": {
        "description": "Photos of one person: multipart (`image` repeated, `identity`) or JSON.",
        "content": {"application/json": {"schema": GalleryJSON.model_json_schema()}},
    }
}

# Starlette's multipart limits (max_part_size: a text field; files are bounded by the body
# limits of the UploadGate). Fixed when the routes are declared, so the gallery's file count
# is checked against the configured max_add_images after parsing.
_SEARCH_FORM_LIMITS = {"max_files": 1, "max_fields": 8, "max_part_size": 64 * 1024}
_GALLERY_FORM_LIMITS = {"max_files": 1000, "max_fields": 8, "max_part_size": 64 * 1024}
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the text fields around the files


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


app = FastAPI(
    title="facerec",
    version="1.0",
    description="Face image retrieval: upload a photo, get the most similar faces of the gallery "
                "with their identities and CelebA attributes. MTCNN face detection (Zhang et al. 2016) with a face gate, "
                "CNN embeddings trained with metric-learning losses, KD-tree search.",
    docs_url=None,  # FastAPI's Swagger UI loads from a CDN: blank offline; /docs below needs no network
    redoc_url=None,
)
app.add_middleware(UploadGate)
app.add_middleware(HostCheck)  # a foreign Host is refused before the gate reserves or reads anything
app.add_middleware(SecurityHeaders)  # added last = outermost: its headers are on every response


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "code": code}, status_code=status, headers=headers)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default answers a list of pydantic errors; the API has one shape for every 4xx.
    return _error(422, "bad_parameter", _validation_message(exc.errors()))


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type"}


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such path {request.url.path!r}; the API is under /v1/ (see /docs)"
    return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message,
                  getattr(exc, "headers", None))


app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@app.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    from facerec.serve.docs import render_docs

    return HTMLResponse(render_docs(app.openapi(), request.scope.get("root_path", "").rstrip("/")))


@app.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------


def decode_b64(text: Any, field: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise APIError(422, "bad_parameter", f"{field} must be a string of base64 text (got {_json_type(text)})")
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


_WHITESPACE = re.compile(r"\s+")
_JSON_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed JSON value's type, as the client wrote it."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _json_body(body: bytes) -> Any:
    """A request body parsed by the API's one JSON parser (limits: :mod:`facerec.serve.jsonbody`)."""
    try:
        return parse_json(body)
    except JSONBodyError as exc:
        raise APIError(400, "bad_json", str(exc)) from None


def _check_path_identity(identity: int) -> None:
    if not 0 <= identity <= IDENTITY_MAX:
        raise APIError(422, "bad_parameter", f"identity must be an integer in [0, {IDENTITY_MAX}] (got {identity})")


def _validated(model: type[BaseModel], payload: Any) -> Any:
    """``payload`` (a parsed JSON body) as ``model``, or 422 ``bad_parameter`` naming each field."""
    if not isinstance(payload, dict):
        raise APIError(422, "bad_parameter", f"body: a JSON object with the fields {sorted(f.alias or n for n, f in model.model_fields.items())} "
                                             f"expected (got {_json_type(payload)})")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise APIError(422, "bad_parameter", _validation_message(exc.errors())) from None


def parse_identity(value: Any, form: bool = False) -> int:
    """The one reading of an identity, for JSON (``value`` parsed: an integer, not a boolean) and
    form fields (``form``: the text of an integer as JSON writes it, so ``1_000``, ``42.0``,
    ``+7`` or ``007`` are refused there as in JSON). 422 ``bad_parameter`` outside [0, IDENTITY_MAX]."""
    name = "field identity" if form else "identity"  # as FastAPI names a form field, pydantic a JSON one
    if form:
        if not (isinstance(value, str) and len(value) <= 20 and _JSON_INTEGER.fullmatch(value)):
            raise APIError(422, "bad_parameter", f"{name}: Input should be a plain decimal integer, like 42 "
                                                 f"(got {_short(value)})")
        shown, value = _short(value), int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            raise APIError(422, "bad_parameter", f"{name}: Input should be a valid integer (got {_short(value)})")
        shown = _short(value)
    if value < 0:
        raise APIError(422, "bad_parameter", f"{name}: Input should be greater than or equal to 0 (got {shown})")
    if value > IDENTITY_MAX:
        raise APIError(422, "bad_parameter", f"{name}: Input should be less than or equal to {IDENTITY_MAX} (got {shown})")
    return value


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


_WHERE = {"query": "query parameter ", "body": "field ", "path": "path parameter ", "header": "header "}


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """``query parameter k: Input should be greater than or equal to 1 (got '0')``, one per error."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        where = _WHERE.get(loc[0], "") if loc else ""
        name = ".".join(loc[1:] if where else loc) or "body"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, UploadFile)) or got is None and e.get("type") == "missing" else \
            f" (got {_short(got)})"
        parts.append(f"{where}{name}: {e['msg']}{shown}")
    return "; ".join(parts)


def _short(value: Any, n: int = 60) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as the client wrote it (JSON), not Python's True
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# --------------------------------------------------------------------------------------------
# The deployment
# --------------------------------------------------------------------------------------------


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """``config``: ServeConfig as a dict; ``embedders``: model name -> Embedder handle."""

    def __init__(self, config: dict[str, Any], embedders: dict[str, Any], retriever: Any):
        from facerec.serve.runtime import print_tracebacks_as_text

        print_tracebacks_as_text()
        self.cfg = config
        self.embedders = embedders
        self.retriever = retriever
        self.default_model = config["default_model"]
        self.max_upload = int(config["max_upload_bytes"])
        self.max_add = int(config["max_add_images"])
        self.timeout = float(config["request_timeout_s"])
        token = config.get("gallery_token") or os.environ.get(config["gallery_token_env"]) or None
        self._token = token.encode() if token else None
        # Read access (search, images, identities): open unless a read token is configured; the
        # gallery token reads too. An empty variable is unset, like the gallery token's.
        read = config.get("read_token") or os.environ.get(config.get("read_token_env") or "FACEREC_READ_TOKEN") or None
        self._read_token = read.encode() if read else None
        self._model_info: dict[str, dict[str, Any]] = {}
        # Bodies are bounded before they are read (UploadGate): a search carries one photo (base64
        # in JSON is 4/3 of it), an add up to max_add_images; other routes at most two photos.
        search_limit = self.max_upload * 4 // 3 + _FORM_OVERHEAD
        app.state.upload_budget = UploadBudget(
            total=int(config["max_inflight_upload_bytes"]),
            limits={"/v1/search": search_limit, "/v1/gallery": self.max_upload * self.max_add * 4 // 3 + _FORM_OVERHEAD},
            default_limit=2 * search_limit,
            before_body={"/v1/gallery": self._authorize_headers, "/v1/search": self._authorize_read_headers,
                         "/v1/verify": self._authorize_read_headers},
        )
        app.state.allowed_hosts = list(config.get("allowed_hosts") or DEFAULT_ALLOWED_HOSTS)

    async def _call(self, response, what: str):
        from ray.exceptions import RayActorError, WorkerCrashedError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

        try:
            return await asyncio.wait_for(response, self.timeout)
        except asyncio.TimeoutError:
            raise APIError(504, "timeout", f"{what} did not answer within {self.timeout:.0f}s; retry later") from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise APIError(503, "overloaded", f"{what} is overloaded or unavailable; retry later ({type(exc).__name__})",
                           headers={"Retry-After": "1"}) from None
        except (RayActorError, ReplicaUnavailableError, WorkerCrashedError) as exc:
            # The replica died under the request (killed, out of memory, node lost): Serve starts
            # a new one, so the same request is worth retrying.
            raise APIError(503, "replica_died", f"{what} stopped while answering ({type(exc).__name__}); retry in a "
                                                f"few seconds", headers={"Retry-After": "2"}) from None

    def _check_model(self, name: str | None) -> str:
        name = name or self.default_model
        if name not in self.embedders:
            raise APIError(400, "unknown_model", f"model {name!r} is not served; choose one of {sorted(self.embedders)} (GET /v1/models)")
        return name

    async def _read_search(self, request: Request, fields: dict[str, Any], upload: UploadFile | None) -> tuple[bytes, SearchParams]:
        """The photo and the parameters of a search: ``fields`` are the query and form values
        (already validated by FastAPI), ``upload`` the multipart file."""
        ctype = _content_type(request)
        fields = {k: v for k, v in fields.items() if v is not None}
        if ctype == "multipart/form-data":
            if upload is None:
                raise APIError(400, "missing_image", "multipart body has no file field 'image'; send the photo as image=@photo.jpg")
            data = await upload.read()
        elif ctype == "application/json":
            payload = _json_body(await request.body())
            if not isinstance(payload, dict) or "image_base64" not in payload:
                raise APIError(422, "missing_image", 'JSON body must be an object with "image_base64" (and optionally k, model, faces)')
            extra = sorted(set(payload) - {"image_base64", "k", "model", "faces"})
            if extra:
                raise APIError(422, "bad_request", f"unknown JSON fields {extra}; allowed: image_base64, k, model, faces")
            data = decode_b64(payload.pop("image_base64"), "image_base64", self.max_upload)
            fields.update(payload)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            data = await request.body()
        else:
            raise APIError(415, "unsupported_media_type",
                           f"Content-Type {ctype or '(none)'!r} is not accepted: use multipart/form-data (field 'image'), "
                           f"application/json ({{'image_base64': ...}}) or an image/* body")
        if len(data) > self.max_upload:
            raise APIError(413, "too_large", f"image of {len(data):,} bytes exceeds the limit of {self.max_upload:,} bytes")
        if not data:
            raise APIError(400, "empty", "the uploaded image is empty (0 bytes)")
        fields.setdefault("k", self.cfg["default_k"])
        try:
            params = SearchParams(**fields)
        except ValidationError as exc:
            raise APIError(422, "bad_parameter", _validation_message(exc.errors())) from None
        return data, params

    # ---- routes --------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        openapi_extra=_SEARCH_BODY,
        form_limits=_SEARCH_FORM_LIMITS,
        responses=_error_responses(400, 401, 413, 415, 422, 503, 504),
        summary="Find the gallery faces most similar to the face(s) in a photo",
    )
    async def search(
        self,
        request: Request,
        k: int | None = Query(None, ge=1, le=K_MAX, description="Results per face (default 9)"),
        model: str | None = Query(None, description="Served model name"),
        faces: Literal["largest", "all"] | None = Query(None, description="largest face only, or every face"),
        # Optional for FastAPI because the same route takes JSON and raw image bodies; a multipart
        # body without it is a 400 missing_image.
        image: UploadFile | None = File(None, description="The photo (JPEG, PNG, ...); required in a multipart body"),
        form_k: int | None = Form(None, alias="k", ge=1, le=K_MAX, description="Results per face (default 9)"),
        form_model: str | None = Form(None, alias="model", description="Served model name"),
        form_faces: Literal["largest", "all"] | None = Form(None, alias="faces", description="largest face only, or every face"),
    ) -> SearchResponse:
        self._authorize_read(request)
        t0 = time.perf_counter()
        # form fields win over the query string
        fields = {"k": form_k if form_k is not None else k, "model": form_model or model, "faces": form_faces or faces}
        data, params = await self._read_search(request, fields, image)
        name = self._check_model(params.model)
        t1 = time.perf_counter()
        emb = await self._call(self.embedders[name].embed.remote(data, params.faces), f"model {name}")
        if not emb["ok"]:
            raise APIError(emb["status"], emb["code"], emb["message"])
        t2 = time.perf_counter()
        queries = np.stack([f["embedding"] for f in emb["faces"]])
        found = await self._call(self.retriever.search.remote(name, queries, params.k), "retriever")
        t3 = time.perf_counter()
        prefix = request.scope.get("root_path", "").rstrip("/")
        faces_out = []
        for face, hits in zip(emb["faces"], found["results"]):
            for h in hits:
                h["thumbnail_url"] = f"{prefix}/v1/images/{quote(h['image_id'])}"
            x, y, w, h_ = face["box"]
            faces_out.append({"box": {"x": x, "y": y, "w": w, "h": h_}, "results": hits})
        decision = verification.decision_of(found.get("open_set"))
        verification.mark_hits(faces_out, None if decision is None else decision["threshold"])
        body = {
            "model": name, "model_id": emb["model_id"], "k": params.k, "faces_mode": params.faces,
            "image": {"width": emb["width"], "height": emb["height"]}, "gallery_version": found["version"],
            "faces": faces_out,
            "decision": decision,
            "timing_ms": {"parse": (t1 - t0) * 1e3, "embed": (t2 - t1) * 1e3, "search": (t3 - t2) * 1e3,
                          "total": (time.perf_counter() - t0) * 1e3, "batch_size": float(emb["batch_size"]),
                          **{f"embed_{k_}": v for k_, v in emb["timing_ms"].items()}},
        }
        # Returned as is: the dicts already have the SearchResponse shape (pinned by the tests);
        # re-validating 9 x 40 attributes per request through pydantic costs the Ingress CPU.
        return JSONResponse(body)

    @app.post(
        "/v1/verify",
        response_model=VerifyResponse,
        openapi_extra={"requestBody": {
            "description": "Two photos: multipart (`image1`, `image2` files; `far`, `model` fields) or JSON with "
                           "`image1_base64` and `image2_base64`. The largest face of each is compared.",
            "content": {"application/json": {"schema": VerifyJSON.model_json_schema()}}}},
        responses=_error_responses(400, 401, 409, 413, 415, 422, 503, 504),
        summary="Are the faces of two photos the same person? (at a calibrated false accept rate)",
    )
    async def verify(
        self,
        request: Request,
        far: float | None = Query(None, description="False accept rate (one of the model's calibrated ones; default "
                                                    "its default_far, 0.001)"),
        model: str | None = Query(None, description="Served model name"),
        image1: UploadFile | None = File(None, description="The first photo"),
        image2: UploadFile | None = File(None, description="The second photo"),
        form_far: float | None = Form(None, alias="far", description="False accept rate"),
        form_model: str | None = Form(None, alias="model", description="Served model name"),
    ) -> VerifyResponse:
        self._authorize_read(request)  # also checked before the body was read (UploadGate)
        ctype = _content_type(request)
        if ctype == "multipart/form-data":
            missing = [n for n, u in (("image1", image1), ("image2", image2)) if u is None]
            if missing:
                raise APIError(400, "missing_image", f"multipart body has no file field {' or '.join(missing)}; send "
                                                     f"image1=@a.jpg and image2=@b.jpg")
            images = [await image1.read(), await image2.read()]
            far = form_far if form_far is not None else far
            model = form_model or model
        elif ctype == "application/json":
            payload = _validated(VerifyJSON, _json_body(await request.body()))
            images = [decode_b64(payload.image1_base64, "image1_base64", self.max_upload),
                      decode_b64(payload.image2_base64, "image2_base64", self.max_upload)]
            far = payload.far if payload.far is not None else far
            model = payload.model or model
        else:
            raise APIError(415, "unsupported_media_type",
                           f"Content-Type {ctype or '(none)'!r} is not accepted: use multipart/form-data (files image1, "
                           f"image2) or application/json (image1_base64, image2_base64)")
        for i, data in enumerate(images, start=1):
            if not data:
                raise APIError(400, "empty", f"image{i} is empty (0 bytes)")
            if len(data) > self.max_upload:
                raise APIError(413, "too_large", f"image{i} of {len(data):,} bytes exceeds the limit of {self.max_upload:,} bytes")
        name = self._check_model(model)
        picked = verification.pick((await self._models()).get(name), far)
        if picked == "uncalibrated":
            raise APIError(409, "uncalibrated",
                           f"model {name!r} has no verification calibration, so it cannot say whether two faces are the "
                           f"same person; calibrate it (`facerec calibrate --model CHECKPOINT --lfw LFW_DIR`) and restart "
                           f"the server, or use a calibrated model (GET /v1/models: calibration)")
        if isinstance(picked, str):
            raise APIError(422, "bad_far", picked)
        far_used, threshold = picked
        results = await asyncio.gather(*(self._call(self.embedders[name].embed.remote(d, "largest"), f"model {name}")
                                         for d in images))
        for i, res in enumerate(results, start=1):
            if not res["ok"]:
                raise APIError(res["status"], res["code"], f"image{i}: {res['message']}")
        faces = [res["faces"][0] for res in results]
        d = verification.distance(faces[0]["embedding"], faces[1]["embedding"])
        return JSONResponse({
            "same_person": d <= threshold, "distance": d, "threshold": threshold, "far": far_used, "model": name,
            "model_id": results[0]["model_id"],
            "boxes": [{"x": b[0], "y": b[1], "w": b[2], "h": b[3]} for b in (f["box"] for f in faces)],
        })

    @app.get(
        "/v1/images/{image_id}",
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **_error_responses(400, 404)},
        response_class=Response,
        summary="The face crop of a gallery image (by its image_id from a search result)",
    )
    async def image(self, request: Request, image_id: str) -> Response:
        self._authorize_read(request)
        if not _IMAGE_ID.match(image_id) or ".." in image_id:
            raise APIError(400, "bad_image_id", f"{image_id!r} is not a gallery image id (letters, digits, '_', '-', '.')")
        data = await self._call(self.retriever.crop_bytes.remote(image_id), "retriever")
        if data is None:
            raise APIError(404, "not_found", f"no gallery image with id {image_id!r}")
        # Stored inputs are PNG (galleries built before input kinds hold JPEG): sniff the bytes.
        media = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        # A face is biometric data: no shared cache (proxy, CDN) keeps it, nor the browser's disk.
        return Response(content=data, media_type=media, headers={"Cache-Control": "private, no-store"})

    def _authorize_headers(self, headers: Headers) -> None:
        """The bearer token of a gallery write, checked by the UploadGate before the body is read
        (an unauthenticated client cannot make the server receive its uploads)."""
        if self._token is None:
            raise GateRefusal(403, "writes_disabled",
                              f"gallery writes are disabled: no token configured (set gallery_token or ${self.cfg['gallery_token_env']})")
        header = headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise GateRefusal(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                              headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.strip().encode(), self._token):
            raise GateRefusal(401, "unauthorized", "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def _authorize(self, request: Request) -> None:
        try:
            self._authorize_headers(request.headers)
        except GateRefusal as r:
            raise APIError(r.status, r.code, r.message, r.headers) from None

    def _authorize_read_headers(self, headers: Headers) -> None:
        """With a read token configured, searches, verifies, images and listings need it (or the gallery
        token) as a bearer token; without one they are open."""
        if self._read_token is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise GateRefusal(401, "unauthorized", "this server needs a read token: send 'Authorization: Bearer <token>'",
                              headers={"WWW-Authenticate": "Bearer"})
        given_b = given.strip().encode()
        if not (secrets.compare_digest(given_b, self._read_token)
                or (self._token is not None and secrets.compare_digest(given_b, self._token))):
            raise GateRefusal(401, "unauthorized", "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def _authorize_read(self, request: Request) -> None:
        try:
            self._authorize_read_headers(request.headers)
        except GateRefusal as r:
            raise APIError(r.status, r.code, r.message, r.headers) from None

    @app.post(
        "/v1/gallery",
        status_code=201,
        response_model=GalleryAddResponse,
        openapi_extra=_GALLERY_BODY,
        form_limits=_GALLERY_FORM_LIMITS,
        responses={200: {"model": GalleryAddResponse, "description": "Every photo was already in the gallery for this "
                                                                     "identity: nothing added (see duplicate_of)"},
                   **_error_responses(400, 401, 403, 409, 413, 415, 422, 503, 504)},
        summary="Add photos of a person to the gallery (embedded, indexed and saved before the answer)",
    )
    async def gallery_add(
        self,
        request: Request,
        image: list[UploadFile] | None = File(None, description="Photos of one person (repeat the field); required "
                                                                "in a multipart body, with identity"),
        # Read as text and parsed by parse_identity, like the JSON field (FastAPI's int took "1_000"
        # and "42.0"); documented as the integer it must be.
        identity: str | None = Form(None, description=f"Identity label, 0-{IDENTITY_MAX} (a plain decimal integer)",
                                    json_schema_extra={"anyOf": [{"type": "integer", "minimum": 0, "maximum": IDENTITY_MAX},
                                                                 {"type": "null"}]}),
        display_name: str | None = Form(None, min_length=1, max_length=100,
                                        description="A display name for the identity (kept in the gallery)"),
    ) -> GalleryAddResponse:
        self._authorize(request)  # also checked before the body was read (UploadGate); kept for direct callers
        ctype = _content_type(request)
        if ctype == "multipart/form-data":
            if not image:
                raise APIError(400, "missing_image", "multipart body needs one or more file fields 'image'")
            if identity is None:
                raise APIError(422, "bad_parameter", f"field identity: required, an integer in [0, {IDENTITY_MAX}]")
            identity = parse_identity(identity, form=True)
            if len(image) > self.max_add:
                raise APIError(413, "too_many_images", f"{len(image)} images in one request; the limit is {self.max_add}")
            images = [await u.read() for u in image]
        elif ctype == "application/json":
            raw = _json_body(await request.body())
            if isinstance(raw, dict) and "identity" in raw:
                raw["identity"] = parse_identity(raw["identity"])
            payload = _validated(GalleryJSON, raw)
            if len(payload.images_base64) > self.max_add:
                raise APIError(413, "too_many_images", f"{len(payload.images_base64)} images in one request; the limit is {self.max_add}")
            images = [decode_b64(t, f"images_base64[{i}]", self.max_upload) for i, t in enumerate(payload.images_base64)]
            identity, display_name = payload.identity, payload.display_name
        else:
            raise APIError(415, "unsupported_media_type", f"Content-Type {ctype or '(none)'!r}: use multipart/form-data or application/json")
        for i, data in enumerate(images):
            if not data:
                raise APIError(400, "empty", f"image {i} is empty (0 bytes)")
            if len(data) > self.max_upload:
                raise APIError(413, "too_large", f"image {i} of {len(data):,} bytes exceeds the limit of {self.max_upload:,} bytes")
        names = sorted(self.embedders)
        calls = [self.embedders[m].embed.remote(img, "largest", m == names[0]) for img in images for m in names]
        results = await asyncio.gather(*(self._call(c, "embedder") for c in calls))
        per_image = [results[i * len(names):(i + 1) * len(names)] for i in range(len(images))]
        for i, res in enumerate(per_image):
            bad = next((r for r in res if not r["ok"]), None)
            if bad is not None:
                raise APIError(bad["status"], bad["code"], f"image {i}: {bad['message']} (nothing was added)")
        embeddings = {m: np.stack([res[j]["faces"][0]["embedding"] for res in per_image]) for j, m in enumerate(names)}
        crops = [res[0]["crops_png"][0] for res in per_image]
        boxes = [res[0]["faces"][0]["box"] for res in per_image]
        out = await self._call(self.retriever.add.remote(embeddings, [identity] * len(images), crops, boxes, display_name),
                               "retriever")
        if not out["ok"]:
            status = out.get("status", 409)
            raise APIError(status, "gallery_conflict" if status == 409 else "bad_parameter",
                           f"cannot add to this gallery: {out['message']}")
        duplicate_of = out.get("duplicate_of") or [None] * len(images)
        added = sum(d is None for d in duplicate_of)
        warnings = [AddWarning(image=w["image"], code="same_photo_other_identity", image_id=w["image_id"],
                               identity=w["identity"],
                               message=f"image {w['image']} is the same photo as gallery image {w['image_id']} of identity "
                                       f"{w['identity']}; it was added to identity {identity} as well: delete one of "
                                       f"them if that is a mistake")
                    for w in out.get("other_identities", [])]
        body = GalleryAddResponse(added=added, identity=identity, image_ids=out["image_ids"], row_ids=out["row_ids"],
                                  duplicate_of=duplicate_of, gallery_version=out["version"], rows=out["rows"],
                                  warnings=warnings)
        return JSONResponse(body.model_dump(), status_code=201 if added else 200)

    async def _models(self) -> dict[str, dict[str, Any]]:
        missing = [m for m in self.embedders if m not in self._model_info]
        if missing:
            infos = await asyncio.gather(*(self._call(self.embedders[m].info.remote(), f"model {m}") for m in missing))
            self._model_info.update(dict(zip(missing, infos)))
        return self._model_info

    @app.get("/v1/models", response_model=ModelsResponse, summary="Served models and the gallery they search")
    async def models(self) -> ModelsResponse:
        infos = await self._models()
        gallery = await self._call(self.retriever.info.remote(), "retriever")
        return ModelsResponse(
            default=self.default_model,
            models=[ModelInfo(name=n, default=n == self.default_model, index_kind=gallery["models"][n]["index_kind"],
                              open_set=verification.decision_of(gallery["models"][n].get("open_set")),
                              **{k: v for k, v in infos[n].items() if k not in ("name", "open_set")})
                    for n in sorted(infos)],
            gallery_rows=gallery["rows"],
            gallery_version=gallery["version"],
            attribute_names=list(ATTRIBUTE_NAMES),
        )

    @app.get("/healthz", summary="Liveness of the retriever and every model", responses=_error_responses(503))
    async def healthz(self) -> dict[str, Any]:
        try:
            gallery = await self._call(self.retriever.info.remote(), "retriever")
            infos = await asyncio.gather(*(self._call(h.info.remote(), f"model {m}") for m, h in self.embedders.items()))
            self._model_info.update({m: i for m, i in zip(self.embedders, infos)})
        except APIError as exc:
            raise APIError(503, "unhealthy", exc.message) from None
        return {"status": "ok", "gallery_version": gallery["version"], "gallery_rows": gallery["rows"],
                "models": sorted(self.embedders)}

    # ---- the gallery: forget, list, name ------------------------------------------------------

    async def _retriever_write(self, call, what: str) -> dict[str, Any]:
        out = await self._call(call, "retriever")
        if not out["ok"]:
            status = int(out.get("status", 409))
            code = {404: "not_found", 422: "bad_parameter"}.get(status, "gallery_conflict")
            raise APIError(status, code, f"{what}: {out['message']}")
        return out

    @staticmethod
    def _deleted(out: dict[str, Any]) -> JSONResponse:
        body = DeleteResponse(deleted=out["deleted"], image_ids=out["image_ids"], row_ids=out["row_ids"],
                              identities=out["identities"], gallery_version=out["version"], rows=out["rows"],
                              photo_folder=out.get("photo_folder"), message=out.get("message", ""))
        return JSONResponse(body.model_dump())

    @app.delete(
        "/v1/gallery/images/{image_id}",
        response_model=DeleteResponse,
        responses=_error_responses(400, 401, 403, 404, 503, 504),
        summary="Delete one gallery image: its row, crop, embeddings and index entries, for every model, in one new "
                "version, and the copies the server derived from its photo (the photo folder itself is not changed)",
    )
    async def gallery_delete_image(self, request: Request, image_id: str) -> JSONResponse:
        self._authorize(request)
        if not _IMAGE_ID.match(image_id) or ".." in image_id:
            raise APIError(400, "bad_image_id", f"{image_id!r} is not a gallery image id (letters, digits, '_', '-', '.')")
        out = await self._retriever_write(self.retriever.delete.remote(image_ids=[image_id]), f"cannot delete {image_id!r}")
        return self._deleted(out)

    @app.delete(
        "/v1/gallery/identities/{identity}",
        response_model=DeleteResponse,
        responses=_error_responses(401, 403, 404, 422, 503, 504),
        summary="Delete every image of an identity (and its display name), for every model, in one new version, and "
                "the copies the server derived from its photos (the photo folder itself is not changed)",
    )
    async def gallery_delete_identity(self, request: Request, identity: int) -> JSONResponse:
        self._authorize(request)
        _check_path_identity(identity)
        out = await self._retriever_write(self.retriever.delete.remote(identity=identity), f"cannot delete identity {identity}")
        return self._deleted(out)

    @app.get(
        "/v1/gallery/identities",
        response_model=IdentitiesResponse,
        responses=_error_responses(401, 422, 503, 504),
        summary="The gallery's identities in ascending order, with their image counts and display names (paged)",
    )
    async def gallery_identities(
        self,
        request: Request,
        limit: int = Query(100, ge=1, le=1000, description="Identities per page, 1-1000"),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page; omit for the first page"),
    ) -> JSONResponse:
        self._authorize_read(request)
        after = None
        if cursor is not None:
            try:
                after = int(cursor)
            except ValueError:
                raise APIError(422, "bad_parameter", f"cursor {cursor!r} is not a cursor from a previous page") from None
        page = await self._call(self.retriever.identities.remote(limit, after), "retriever")
        return JSONResponse(IdentitiesResponse(**page).model_dump())

    @app.put(
        "/v1/gallery/identities/{identity}",
        response_model=DisplayNameResponse,
        responses=_error_responses(401, 403, 404, 415, 422, 503, 504),
        summary="Set (or with null remove) the display name of an identity of the gallery",
    )
    async def gallery_name_identity(self, request: Request, identity: int) -> JSONResponse:
        self._authorize(request)
        if _content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"display_name": "..."}')
        payload = _validated(DisplayNameJSON, _json_body(await request.body()))
        out = await self._retriever_write(self.retriever.set_name.remote(identity, payload.display_name),
                                          f"cannot name identity {identity}")
        return JSONResponse(DisplayNameResponse(identity=out["identity"], display_name=out["display_name"],
                                                images=out["images"], gallery_version=out["version"]).model_dump())

    @app.post(
        "/v1/gallery/identities/{identity}/merge",
        response_model=MergeResponse,
        openapi_extra={"requestBody": {"required": True, "description": "The identity to merge into this one",
                                        "content": {"application/json": {"schema": MergeJSON.model_json_schema()}}}},
        responses=_error_responses(400, 401, 403, 404, 415, 422, 503, 504),
        summary="Merge another identity into this one (two clusters of one person): every image of `from` becomes an "
                "image of this identity, in one new version",
    )
    async def gallery_merge_identity(self, request: Request, identity: int) -> JSONResponse:
        self._authorize(request)
        _check_path_identity(identity)
        if _content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"from": IDENTITY}')
        payload = _validated(MergeJSON, _json_body(await request.body()))
        out = await self._retriever_write(self.retriever.merge.remote(identity, payload.from_),
                                          f"cannot merge identity {payload.from_} into {identity}")
        return JSONResponse(MergeResponse(identity=out["identity"], merged=out["merged"], moved=out["moved"],
                                          images=out["images"], display_name=out["display_name"],
                                          gallery_version=out["version"]).model_dump())

    @app.put(
        "/v1/gallery/images/{image_id}/identity",
        response_model=MoveResponse,
        openapi_extra={"requestBody": {"required": True, "description": "The identity the image is to belong to",
                                        "content": {"application/json": {"schema": MoveJSON.model_json_schema()}}}},
        responses=_error_responses(400, 401, 403, 404, 409, 415, 422, 503, 504),
        summary="Move one gallery image to another identity (a face put in the wrong person), in one new version",
    )
    async def gallery_move_image(self, request: Request, image_id: str) -> JSONResponse:
        self._authorize(request)
        if not _IMAGE_ID.match(image_id) or ".." in image_id:
            raise APIError(400, "bad_image_id", f"{image_id!r} is not a gallery image id (letters, digits, '_', '-', '.')")
        if _content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"identity": IDENTITY}')
        payload = _validated(MoveJSON, _json_body(await request.body()))
        out = await self._retriever_write(self.retriever.move.remote(image_id, payload.identity),
                                          f"cannot move image {image_id!r}")
        return JSONResponse(MoveResponse(image_id=out["image_id"], identity=out["identity"],
                                         previous_identity=out["previous_identity"], images=out["images"],
                                         display_name=out["display_name"], gallery_version=out["version"]).model_dump())
