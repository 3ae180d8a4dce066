"""The bodies of the HTTP API (pydantic models): what each route takes and answers, and the
OpenAPI documentation generated from them (``/docs``, ``/openapi.json``). The verify bodies and
the search's open-set :class:`~facerec.serve.verification.Decision` live with the decision rule
(:mod:`facerec.serve.verification`).
"""

# No ``from __future__ import annotations``: FastAPI must see the real types (as in the Ingress).
from typing import Any, Literal

from pydantic import BaseModel, Field

from facerec.gallery.format import IDENTITY_MAX  # JSON-safe (2**53 - 1), inside the int64 column
from facerec.serve.config import K_MAX
from facerec.serve.verification import Decision


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
    gallery_labelled: bool = Field(
        True, description="false: the gallery was made from an unlabelled folder, and its people are the server's "
                          "clustering of the faces (named with PUT /v1/gallery/identities/ID), not labels a person gave")
    attribute_names: list[str]


def error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


# The multipart form of each body is generated by FastAPI from the UploadFile/Form parameters;
# these add the other accepted encodings (merged into the generated requestBody).
SEARCH_BODY = {
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

GALLERY_BODY = {
    "requestBody": {
        "description": "Photos of one person: multipart (`image` repeated, `identity`) or JSON.",
        "content": {"application/json": {"schema": GalleryJSON.model_json_schema()}},
    }
}
