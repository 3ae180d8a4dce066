"""The HTTP front of the application: a FastAPI app behind ``@serve.ingress``, composing one
``Embedder`` deployment per model and the ``Retriever`` through DeploymentHandles.

Routes (schema at ``/docs``, ``/openapi.json``):

- ``POST /v1/search``   photo -> faces -> top-k gallery matches per face
- ``GET  /v1/images/{image_id}``  a gallery crop (looked up in the gallery table by id)
- ``POST /v1/gallery``  add photos of an identity (bearer token)
- ``GET  /v1/models``, ``GET /healthz``
- ``GET  /``            the web page (``static/``)

Every bad input ends as a 4xx with ``{"detail": message, "code": code}``; request bodies are
size-limited while they are read, before any parsing.
"""

# No ``from __future__ import annotations``: FastAPI must see the real types of the route
# parameters of the class (Serve copies the methods onto its own ASGI wrapper).
import asyncio
import base64
import binascii
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.serve.config import FACES_MODES, K_MAX

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
    distance: float = Field(description="L2 distance between unit-norm embeddings, in [0, 2]")
    attributes: dict[str, int] = Field(description="The 40 CelebA attributes, -1/1 (0 = unknown)")
    attribute_agreement: float | None = Field(
        description="Share of attributes (known on both) equal to those of the rank-1 result"
    )
    thumbnail_url: str


class FaceResult(BaseModel):
    box: Box = Field(description="Face box in the uploaded image, pixels")
    results: list[Hit]


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
    timing_ms: dict[str, float]


class SearchParams(BaseModel):
    k: int = Field(9, ge=1, le=K_MAX, description=f"Results per face, 1-{K_MAX}")
    model: str | None = Field(None, description="Served model name (GET /v1/models); default: the configured one")
    faces: Literal["largest", "all"] = Field("largest", description="Search with the largest face only, or every face")


class SearchJSON(SearchParams):
    image_base64: str = Field(description="The photo (JPEG/PNG/...), base64; a data: URL prefix is accepted")


class GalleryJSON(BaseModel):
    identity: int = Field(ge=0, description="Identity label of the person in the photos")
    images_base64: list[str] = Field(min_length=1, description="One or more photos of that person, base64")


class GalleryAddResponse(BaseModel):
    added: int
    identity: int
    image_ids: list[str]
    row_ids: list[int]
    gallery_version: int
    rows: int


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


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    gallery_rows: int
    gallery_version: int
    attribute_names: list[str]


def _error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


_SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "The photo, as a multipart upload (field `image`), JSON with `image_base64`, or a raw "
                       "image/* body. `k`, `model`, `faces` may be form/JSON fields or query parameters.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer", "minimum": 1, "maximum": K_MAX, "default": 9},
                        "model": {"type": "string"},
                        "faces": {"type": "string", "enum": list(FACES_MODES), "default": "largest"},
                    },
                }
            },
            "application/json": {"schema": SearchJSON.model_json_schema()},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_GALLERY_BODY = {
    "requestBody": {
        "required": True,
        "description": "Photos of one person: multipart (`image` repeated, `identity`) or JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "identity"],
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "identity": {"type": "integer", "minimum": 0},
                    },
                }
            },
            "application/json": {"schema": GalleryJSON.model_json_schema()},
        },
    }
}


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


app = FastAPI(
    title="facerec",
    version="1.0",
    description="Face image retrieval: upload a photo, get the most similar faces of the gallery "
                "with their identities and CelebA attributes. Haar detection (Viola & Jones 2001), "
                "CNN embeddings trained with metric-learning losses, KD-tree search.",
)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status, headers=exc.headers)


app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (the declared
    Content-Length is checked before reading a byte)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise APIError(400, "bad_request", f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise APIError(413, "too_large", f"request body of {n:,} bytes exceeds the limit of {limit:,} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, "too_large", f"request body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart(request: Request, body: bytes, max_files: int) -> Any:
    async def replay():
        yield body

    try:
        return await MultiPartParser(request.headers, replay(), max_files=max_files, max_fields=16,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as exc:
        raise APIError(400, "bad_request", f"malformed multipart body: {exc.message}") from None
    except Exception as exc:
        raise APIError(400, "bad_request", f"malformed multipart body ({type(exc).__name__}: {exc})") from None


def decode_b64(text: Any, field: str, limit: int) -> bytes:
    if not isinstance(text, str) or not text:
        raise APIError(400, "empty", f"{field} is empty; send the photo as base64 text")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limit * 4 // 3 + 4:
        raise APIError(413, "too_large", f"{field} decodes to more than the limit of {limit:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "bad_base64", f"{field} is not valid base64 ({exc})") from None
    if not data:
        raise APIError(400, "empty", f"{field} decodes to 0 bytes")
    return data


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# The deployment
# --------------------------------------------------------------------------------------------


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """``config``: ServeConfig as a dict; ``embedders``: model name -> Embedder handle."""

    def __init__(self, config: dict[str, Any], embedders: dict[str, Any], retriever: Any):
        self.cfg = config
        self.embedders = embedders
        self.retriever = retriever
        self.default_model = config["default_model"]
        self.max_upload = int(config["max_upload_bytes"])
        self.max_add = int(config["max_add_images"])
        self.timeout = float(config["request_timeout_s"])
        token = config.get("gallery_token") or os.environ.get(config["gallery_token_env"]) or None
        self._token = token.encode() if token else None
        self._model_info: dict[str, dict[str, Any]] = {}

    async def _call(self, response, what: str):
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            return await asyncio.wait_for(response, self.timeout)
        except asyncio.TimeoutError:
            raise APIError(504, "timeout", f"{what} did not answer within {self.timeout:.0f}s; retry later") from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise APIError(503, "overloaded", f"{what} is overloaded or unavailable; retry later ({type(exc).__name__})") from None

    def _check_model(self, name: str | None) -> str:
        name = name or self.default_model
        if name not in self.embedders:
            raise APIError(400, "unknown_model", f"model {name!r} is not served; choose one of {sorted(self.embedders)} (GET /v1/models)")
        return name

    async def _read_search(self, request: Request, query: dict[str, Any]) -> tuple[bytes, SearchParams]:
        ctype = _content_type(request)
        fields: dict[str, Any] = {k: v for k, v in query.items() if v is not None}
        if ctype == "multipart/form-data":
            body = await read_body(request, self.max_upload + 64 * 1024)
            form = await parse_multipart(request, body, max_files=1)
            upload = form.get("image") or form.get("file")
            if upload is None:
                raise APIError(400, "missing_image", "multipart body has no file field 'image'; send the photo as image=@photo.jpg")
            if not isinstance(upload, UploadFile):
                raise APIError(400, "missing_image", "field 'image' must be a file upload, not text")
            data = await upload.read()
            fields.update({k: form[k] for k in ("k", "model", "faces") if k in form})
        elif ctype == "application/json":
            body = await read_body(request, self.max_upload * 4 // 3 + 64 * 1024)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise APIError(400, "bad_json", f"body is not valid JSON ({exc})") from None
            if not isinstance(payload, dict) or "image_base64" not in payload:
                raise APIError(422, "missing_image", 'JSON body must be an object with "image_base64" (and optionally k, model, faces)')
            extra = sorted(set(payload) - {"image_base64", "k", "model", "faces"})
            if extra:
                raise APIError(422, "bad_request", f"unknown JSON fields {extra}; allowed: image_base64, k, model, faces")
            data = decode_b64(payload.pop("image_base64"), "image_base64", self.max_upload)
            fields.update(payload)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            data = await read_body(request, self.max_upload)
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
            raise APIError(422, "bad_parameter", _validation_message(exc)) from None
        return data, params

    # ---- routes --------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        openapi_extra=_SEARCH_BODY,
        responses=_error_responses(400, 413, 415, 422, 503, 504),
        summary="Find the gallery faces most similar to the face(s) in a photo",
    )
    async def search(
        self,
        request: Request,
        k: int | None = Query(None, ge=1, le=K_MAX, description="Results per face (default 9)"),
        model: str | None = Query(None, description="Served model name"),
        faces: Literal["largest", "all"] | None = Query(None, description="largest face only, or every face"),
    ) -> SearchResponse:
        t0 = time.perf_counter()
        data, params = await self._read_search(request, {"k": k, "model": model, "faces": faces})
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
        body = {
            "model": name, "model_id": emb["model_id"], "k": params.k, "faces_mode": params.faces,
            "image": {"width": emb["width"], "height": emb["height"]}, "gallery_version": found["version"],
            "faces": faces_out,
            "timing_ms": {"parse": (t1 - t0) * 1e3, "embed": (t2 - t1) * 1e3, "search": (t3 - t2) * 1e3,
                          "total": (time.perf_counter() - t0) * 1e3, "batch_size": float(emb["batch_size"]),
                          **{f"embed_{k_}": v for k_, v in emb["timing_ms"].items()}},
        }
        # Returned as is: the dicts already have the SearchResponse shape (pinned by the tests);
        # re-validating 9 x 40 attributes per request through pydantic costs the Ingress CPU.
        return JSONResponse(body)

    @app.get(
        "/v1/images/{image_id}",
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **_error_responses(400, 404)},
        response_class=Response,
        summary="The face crop of a gallery image (by its image_id from a search result)",
    )
    async def image(self, image_id: str) -> Response:
        if not _IMAGE_ID.match(image_id) or ".." in image_id:
            raise APIError(400, "bad_image_id", f"{image_id!r} is not a gallery image id (letters, digits, '_', '-', '.')")
        data = await self._call(self.retriever.crop_bytes.remote(image_id), "retriever")
        if data is None:
            raise APIError(404, "not_found", f"no gallery image with id {image_id!r}")
        # Stored inputs are PNG (galleries built before input kinds hold JPEG): sniff the bytes.
        media = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return Response(content=data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            raise APIError(403, "writes_disabled",
                           f"gallery writes are disabled: no token configured (set gallery_token or ${self.cfg['gallery_token_env']})")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise APIError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.strip().encode(), self._token):
            raise APIError(401, "unauthorized", "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @app.post(
        "/v1/gallery",
        status_code=201,
        response_model=GalleryAddResponse,
        openapi_extra=_GALLERY_BODY,
        responses=_error_responses(400, 401, 403, 409, 413, 415, 422, 503, 504),
        summary="Add photos of a person to the gallery (embedded, indexed and saved before the answer)",
    )
    async def gallery_add(self, request: Request) -> GalleryAddResponse:
        self._authorize(request)
        ctype = _content_type(request)
        limit = self.max_upload * self.max_add + 64 * 1024
        if ctype == "multipart/form-data":
            body = await read_body(request, limit)
            form = await parse_multipart(request, body, max_files=self.max_add)
            uploads = form.getlist("image")
            if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
                raise APIError(400, "missing_image", "multipart body needs one or more file fields 'image'")
            images = [await u.read() for u in uploads]
            identity_raw = form.get("identity")
        elif ctype == "application/json":
            body = await read_body(request, limit * 4 // 3)
            try:
                payload = GalleryJSON.model_validate_json(body)
            except ValidationError as exc:
                raise APIError(422, "bad_parameter", _validation_message(exc)) from None
            images = [decode_b64(t, f"images_base64[{i}]", self.max_upload) for i, t in enumerate(payload.images_base64)]
            identity_raw = payload.identity
        else:
            raise APIError(415, "unsupported_media_type", f"Content-Type {ctype or '(none)'!r}: use multipart/form-data or application/json")
        if len(images) > self.max_add:
            raise APIError(413, "too_many_images", f"{len(images)} images in one request; the limit is {self.max_add}")
        try:
            identity = int(identity_raw)
            if identity < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise APIError(422, "bad_parameter", f"identity must be an integer >= 0 (got {identity_raw!r})") from None
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
        out = await self._call(self.retriever.add.remote(embeddings, [identity] * len(images), crops, boxes), "retriever")
        if not out["ok"]:
            raise APIError(409, "gallery_conflict", f"cannot add to this gallery: {out['message']}")
        return GalleryAddResponse(added=len(images), identity=identity, image_ids=out["image_ids"], row_ids=out["row_ids"],
                                  gallery_version=out["version"], rows=out["rows"])

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
                              **{k: v for k, v in infos[n].items() if k != "name"})
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
