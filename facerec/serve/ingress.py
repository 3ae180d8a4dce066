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

Every error, 4xx and 5xx, has one shape, ``{"detail": message, "code": code}``
(:mod:`facerec.serve.http_errors`), query-string and form validation included. Request bodies pass the :class:`~facerec.serve.middleware.
UploadGate` first: a declared length over the route's limit is a 413 and a request that does not fit
in the replica's budget of upload bytes in flight a 503 with ``Retry-After``, both before a byte of
the body is read. Multipart bodies are parsed by FastAPI (``UploadFile``/``Form``) with Starlette's
form limits, JSON bodies by :func:`facerec.serve.jsonbody.parse_json` (400 ``bad_json``), and a
``Host`` outside ``allowed_hosts`` is a 400 ``bad_host`` (:class:`~facerec.serve.middleware.
HostCheck`) before anything else; every response carries the security headers of
:data:`~facerec.serve.middleware.SECURITY_HEADERS`. ``/docs`` is rendered on the server and needs no
network (:mod:`facerec.serve.docs`).

This module holds the app and the deployment with its routes; what they use lives beside it: the
bodies (:mod:`facerec.serve.schemas`), the error shape (:mod:`facerec.serve.http_errors`), reading
a request (:mod:`facerec.serve.parsing`) and the bearer tokens (:mod:`facerec.serve.auth`).
"""

# No ``from __future__ import annotations``: FastAPI must see the real types of the route
# parameters of the class (Serve copies the methods onto its own ASGI wrapper).
import asyncio
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray import serve

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.gallery.format import IDENTITY_MAX
from facerec.serve import verification
from facerec.serve.auth import Tokens
from facerec.serve.config import DEFAULT_ALLOWED_HOSTS, K_MAX
from facerec.serve.http_errors import APIError, add_error_handlers, validation_message
from facerec.serve.middleware import HostCheck, SecurityHeaders, UploadBudget, UploadGate
from facerec.serve.parsing import (check_image_id, check_path_identity, content_type, decode_b64, json_body,
                                   parse_identity, validated)
from facerec.serve.schemas import (GALLERY_BODY, SEARCH_BODY, AddWarning, DeleteResponse, DisplayNameJSON,
                                   DisplayNameResponse, GalleryAddResponse, GalleryJSON, IdentitiesResponse, MergeJSON,
                                   MergeResponse, ModelInfo, ModelsResponse, MoveJSON, MoveResponse, SearchParams,
                                   SearchResponse, error_responses)
from facerec.serve.verification import VerifyJSON, VerifyResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"


# Starlette's multipart limits (max_part_size: a text field; files are bounded by the body
# limits of the UploadGate). Fixed when the routes are declared, so the gallery's file count
# is checked against the configured max_add_images after parsing.
_SEARCH_FORM_LIMITS = {"max_files": 1, "max_fields": 8, "max_part_size": 64 * 1024}
_GALLERY_FORM_LIMITS = {"max_files": 1000, "max_fields": 8, "max_part_size": 64 * 1024}
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the text fields around the files


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
add_error_handlers(app)

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
        self.tokens = Tokens(config)
        self._model_info: dict[str, dict[str, Any]] = {}
        # Bodies are bounded before they are read (UploadGate): a search carries one photo (base64
        # in JSON is 4/3 of it), an add up to max_add_images; other routes at most two photos.
        search_limit = self.max_upload * 4 // 3 + _FORM_OVERHEAD
        app.state.upload_budget = UploadBudget(
            total=int(config["max_inflight_upload_bytes"]),
            limits={"/v1/search": search_limit, "/v1/gallery": self.max_upload * self.max_add * 4 // 3 + _FORM_OVERHEAD},
            default_limit=2 * search_limit,
            before_body={"/v1/gallery": self.tokens.check_write, "/v1/search": self.tokens.check_read,
                         "/v1/verify": self.tokens.check_read},
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
        ctype = content_type(request)
        fields = {k: v for k, v in fields.items() if v is not None}
        if ctype == "multipart/form-data":
            if upload is None:
                raise APIError(400, "missing_image", "multipart body has no file field 'image'; send the photo as image=@photo.jpg")
            data = await upload.read()
        elif ctype == "application/json":
            payload = json_body(await request.body())
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
            raise APIError(422, "bad_parameter", validation_message(exc.errors())) from None
        return data, params

    # ---- routes --------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        openapi_extra=SEARCH_BODY,
        form_limits=_SEARCH_FORM_LIMITS,
        responses=error_responses(400, 401, 413, 415, 422, 503, 504),
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
        self.tokens.check_read(request.headers)
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
        responses=error_responses(400, 401, 409, 413, 415, 422, 503, 504),
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
        self.tokens.check_read(request.headers)  # also checked before the body was read (UploadGate)
        ctype = content_type(request)
        if ctype == "multipart/form-data":
            missing = [n for n, u in (("image1", image1), ("image2", image2)) if u is None]
            if missing:
                raise APIError(400, "missing_image", f"multipart body has no file field {' or '.join(missing)}; send "
                                                     f"image1=@a.jpg and image2=@b.jpg")
            images = [await image1.read(), await image2.read()]
            far = form_far if form_far is not None else far
            model = form_model or model
        elif ctype == "application/json":
            payload = validated(VerifyJSON, json_body(await request.body()))
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
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **error_responses(400, 404)},
        response_class=Response,
        summary="The face crop of a gallery image (by its image_id from a search result)",
    )
    async def image(self, request: Request, image_id: str) -> Response:
        self.tokens.check_read(request.headers)
        check_image_id(image_id)
        data = await self._call(self.retriever.crop_bytes.remote(image_id), "retriever")
        if data is None:
            raise APIError(404, "not_found", f"no gallery image with id {image_id!r}")
        # Stored inputs are PNG (galleries built before input kinds hold JPEG): sniff the bytes.
        media = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        # A face is biometric data: no shared cache (proxy, CDN) keeps it, nor the browser's disk.
        return Response(content=data, media_type=media, headers={"Cache-Control": "private, no-store"})

    @app.post(
        "/v1/gallery",
        status_code=201,
        response_model=GalleryAddResponse,
        openapi_extra=GALLERY_BODY,
        form_limits=_GALLERY_FORM_LIMITS,
        responses={200: {"model": GalleryAddResponse, "description": "Every photo was already in the gallery for this "
                                                                     "identity: nothing added (see duplicate_of)"},
                   **error_responses(400, 401, 403, 409, 413, 415, 422, 503, 504)},
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
        self.tokens.check_write(request.headers)  # also checked before the body was read (UploadGate); kept for direct callers
        ctype = content_type(request)
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
            raw = json_body(await request.body())
            if isinstance(raw, dict) and "identity" in raw:
                raw["identity"] = parse_identity(raw["identity"])
            payload = validated(GalleryJSON, raw)
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
            gallery_labelled=gallery.get("labelled", True),
            attribute_names=list(ATTRIBUTE_NAMES),
        )

    @app.get("/healthz", summary="Liveness of the retriever and every model", responses=error_responses(503))
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
        responses=error_responses(400, 401, 403, 404, 503, 504),
        summary="Delete one gallery image: its row, crop, embeddings and index entries, for every model, in one new "
                "version, and the copies the server derived from its photo (the photo folder itself is not changed)",
    )
    async def gallery_delete_image(self, request: Request, image_id: str) -> JSONResponse:
        self.tokens.check_write(request.headers)
        check_image_id(image_id)
        out = await self._retriever_write(self.retriever.delete.remote(image_ids=[image_id]), f"cannot delete {image_id!r}")
        return self._deleted(out)

    @app.delete(
        "/v1/gallery/identities/{identity}",
        response_model=DeleteResponse,
        responses=error_responses(401, 403, 404, 422, 503, 504),
        summary="Delete every image of an identity (and its display name), for every model, in one new version, and "
                "the copies the server derived from its photos (the photo folder itself is not changed)",
    )
    async def gallery_delete_identity(self, request: Request, identity: int) -> JSONResponse:
        self.tokens.check_write(request.headers)
        check_path_identity(identity)
        out = await self._retriever_write(self.retriever.delete.remote(identity=identity), f"cannot delete identity {identity}")
        return self._deleted(out)

    @app.get(
        "/v1/gallery/identities",
        response_model=IdentitiesResponse,
        responses=error_responses(401, 422, 503, 504),
        summary="The gallery's identities in ascending order, with their image counts and display names (paged)",
    )
    async def gallery_identities(
        self,
        request: Request,
        limit: int = Query(100, ge=1, le=1000, description="Identities per page, 1-1000"),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page; omit for the first page"),
    ) -> JSONResponse:
        self.tokens.check_read(request.headers)
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
        responses=error_responses(401, 403, 404, 415, 422, 503, 504),
        summary="Set (or with null remove) the display name of an identity of the gallery",
    )
    async def gallery_name_identity(self, request: Request, identity: int) -> JSONResponse:
        self.tokens.check_write(request.headers)
        if content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"display_name": "..."}')
        payload = validated(DisplayNameJSON, json_body(await request.body()))
        out = await self._retriever_write(self.retriever.set_name.remote(identity, payload.display_name),
                                          f"cannot name identity {identity}")
        return JSONResponse(DisplayNameResponse(identity=out["identity"], display_name=out["display_name"],
                                                images=out["images"], gallery_version=out["version"]).model_dump())

    @app.post(
        "/v1/gallery/identities/{identity}/merge",
        response_model=MergeResponse,
        openapi_extra={"requestBody": {"required": True, "description": "The identity to merge into this one",
                                        "content": {"application/json": {"schema": MergeJSON.model_json_schema()}}}},
        responses=error_responses(400, 401, 403, 404, 415, 422, 503, 504),
        summary="Merge another identity into this one (two clusters of one person): every image of `from` becomes an "
                "image of this identity, in one new version",
    )
    async def gallery_merge_identity(self, request: Request, identity: int) -> JSONResponse:
        self.tokens.check_write(request.headers)
        check_path_identity(identity)
        if content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"from": IDENTITY}')
        payload = validated(MergeJSON, json_body(await request.body()))
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
        responses=error_responses(400, 401, 403, 404, 409, 415, 422, 503, 504),
        summary="Move one gallery image to another identity (a face put in the wrong person), in one new version",
    )
    async def gallery_move_image(self, request: Request, image_id: str) -> JSONResponse:
        self.tokens.check_write(request.headers)
        check_image_id(image_id)
        if content_type(request) != "application/json":
            raise APIError(415, "unsupported_media_type", 'send application/json: {"identity": IDENTITY}')
        payload = validated(MoveJSON, json_body(await request.body()))
        out = await self._retriever_write(self.retriever.move.remote(image_id, payload.identity),
                                          f"cannot move image {image_id!r}")
        return JSONResponse(MoveResponse(image_id=out["image_id"], identity=out["identity"],
                                         previous_identity=out["previous_identity"], images=out["images"],
                                         display_name=out["display_name"], gallery_version=out["version"]).model_dump())
