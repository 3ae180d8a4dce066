"""Issue 19, the security review of ``facerec serve``: verify behind the read token, one JSON parser
with limits for every route, large JPEGs decoded reduced, the Host check (DNS rebinding),
wrapped base64, one reading of identities and the same photo under two identities, method before
auth, and the security headers of Serve's own routes.

The HTTP tests run a third application ("hard", at /hard) on a private gallery copy, with a read
token, extra allowed host names and a larger upload limit; the unit tests need no Ray."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from facerec.data.images import decode_image, decode_image_reduced, encode_jpeg
from facerec.errors import ConfigError, ImageDecodeError
from facerec.serve.jsonbody import JSONBodyError, parse_json

from .conftest import TOKEN, served_ids
from .test_http import read_response

READ_TOKEN = "read-token-hardening"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
PREFIX = "/hard"
HARD_UPLOAD = 2_000_000


# ---- the JSON parser (no Ray) ----------------------------------------------------------------

@pytest.mark.parametrize("body, pattern", [
    (b"[" * 100_000 + b"]" * 100_000, r"^body is nested too deeply: arrays and objects more than 20 levels inside one "
                                      r"another \(the limit\)$"),
    (b"[" * 21 + b"]" * 21, r"nested too deeply"),
    (b'{"k": ' + b"9" * 5000 + b"}", r"^body has a number with too many digits \(5,000 in 999999999999\.\.\.999999; "
                                     r"the limit is 100 digits\)$"),
    (b'{"far": 0.' + b"1" * 200 + b"}", r"too many digits \(201 in 0\.1111111111"),
    (b"{not json", r"^body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2$"),
    (b'{\n "k": 3,\n}', r"^body is not valid JSON: .* at line 3 column 1$"),
    (b'{"k": 3} x', r"^body is not valid JSON: Extra data at line 1 column 10$"),
    (b'\xff{"k": 3}', r"^body is not UTF-8 text \(byte 0xff at offset 0\)"),
    (b'{"display_name": "a\\ud800"}', r"half a character \(a lone UTF-16 surrogate\)"),
    (b"[" + b"[1]," * 1000 + b"[1]]", r"^body has too many arrays and objects \(1,002; the limit is 1,000\)$"),
])
def test_json_parser_refuses_with_a_message(body, pattern):
    with pytest.raises(JSONBodyError, match=pattern):
        parse_json(body)


@pytest.mark.parametrize("body", [
    b"[" * 20 + b"]" * 20,                                         # the limit itself
    b'{"a": "' + b"[" * 50 + b'", "b": "\\"' + b"{" * 30 + b'"}',  # brackets in strings, after an escaped quote
    b'{"a": "\\\\", "b": [' + b"[" * 18 + b"]" * 19 + b"}",        # an escaped backslash ends its string
    b'{"k": ' + b"9" * 100 + b"}",                                 # 100 digits
    b'{"image_base64": "' + b"0123456789+e" * 50 + b'", "k": 3}',  # a long "number-like" run inside a string
    '{"display_name": "Ada \\ud83d\\ude00 é"}'.encode(),          # a surrogate pair, UTF-8 text
    b"[" + b"1," * 50_000 + b"1]",
])
def test_json_parser_accepts_what_json_reads(body):
    assert parse_json(body) == json.loads(body)


# ---- large JPEGs decoded reduced (no Ray) -----------------------------------------------------

def _big_jpeg(width: int, height: int, quality: int = 60, exif: bytes | None = None) -> bytes:
    """A smooth photo-like image (gradients and a few shapes) of width x height."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height:8, 0:width:8]
    small = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 127 // (width + height))], -1)
    im = Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    d.ellipse([width // 4, height // 4, width // 2, height // 2], fill=(230, 190, 160))
    d.rectangle([width * 2 // 3, height // 8, width * 5 // 6, height // 3], fill=(20, 40, 200))
    import io

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_at_a_quarter_and_looks_the_same():
    data = _big_jpeg(6000, 6500)
    rgb, size = decode_image_reduced(data, 1600)
    assert size == (6000, 6500)
    # 1/8 would be 813 px long, under 1600; 1/4 is the largest reduction that keeps >= 1600
    assert rgb.shape == (-(-6500 // 4), -(-6000 // 4), 3)
    import cv2

    full = decode_image(data)
    assert full.shape == (6500, 6000, 3)
    shrunk = cv2.resize(full, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - rgb.astype(int)).mean() < 2.0


def test_reduced_decode_keeps_the_orientation_size_cap_and_other_formats():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as 6500 x 6000
    rgb, size = decode_image_reduced(_big_jpeg(6500, 6000, exif=exif.tobytes()), 1600)
    assert size == (6000, 6500) and rgb.shape == (1625, 1500, 3)
    small = _big_jpeg(3000, 2000)  # under twice the floor: decoded as it is
    rgb, size = decode_image_reduced(small, 1600)
    assert size == (3000, 2000) and rgb.shape == (2000, 3000, 3)
    from facerec.data.images import encode_png

    png = encode_png(np.zeros((3400, 200, 3), np.uint8))  # not a JPEG: full size
    rgb, size = decode_image_reduced(png, 1600)
    assert size == (200, 3400) and rgb.shape == (3400, 200, 3)
    with pytest.raises(ImageDecodeError, match=r"6000x6500 = 39,000,000 pixels exceeds the limit of 1,000,000 pixels"):
        decode_image_reduced(_big_jpeg(6000, 6500), 1600, max_pixels=1_000_000)


def _enlarged(data: bytes, long_side: int, quality: int) -> bytes:
    import cv2

    rgb = decode_image(data)
    f = long_side / max(rgb.shape[:2])
    big = cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
    return encode_jpeg(big, quality=quality)


def test_embedder_answers_a_large_jpeg_in_the_photos_pixels(serve_artifacts, photos):
    """A 6500 px photo is decoded at a quarter, yet its box is in the photo's pixels (as a full
    decode finds it) and its face crop is the full decode's crop, to a few grey levels."""
    from facerec.detect import DetectorConfig
    from facerec.serve.embedder import FaceEmbedderCore

    big = _enlarged(photos[0][1], 6500, 80)
    core = FaceEmbedderCore(serve_artifacts["checkpoints"]["mnv3"], crop_size=218, margin=0.2, torch_threads=1)
    rgb, size = core.decode_sized(big)
    full = decode_image(big)
    assert size == (full.shape[1], full.shape[0]) and max(rgb.shape) == -(-6500 // 4)
    [reduced] = core.embed_many([(big, "largest", True)])
    ref_box = DetectorConfig().build().find(full).boxes[0]
    assert (reduced["width"], reduced["height"]) == size
    box = reduced["faces"][0]["box"]
    assert all(abs(b - r) <= 0.03 * ref_box[2] + 8 for b, r in zip(box, ref_box)), (box, ref_box)
    core.decode_min_side = None  # the old way: every pixel decoded
    [whole] = core.embed_many([(big, "largest", True)])
    assert max(whole["faces"][0]["box"][2:]) > 1000 and (whole["width"], whole["height"]) == size
    a, b = (decode_image(r["crops_png"][0]).astype(int) for r in (reduced, whole))
    assert a.shape == b.shape and np.abs(a - b).mean() < 4.0
    assert float(np.linalg.norm(reduced["faces"][0]["embedding"] - whole["faces"][0]["embedding"])) < 0.1 * float(
        np.linalg.norm(whole["faces"][0]["embedding"]))


# ---- settings (no Ray) -------------------------------------------------------------------------

@pytest.mark.parametrize("hosts, match", [
    ([], r"allowed_hosts=\[\] is invalid: expected a non-empty list of host names"),
    ("localhost", r"allowed_hosts='localhost' is invalid"),
    (["localhost:8000"], r"allowed_hosts\[\]='localhost:8000' is invalid: expected a host name as in a Host header "
                         r"without the port"),
    (["http://photos.example"], r"allowed_hosts\[\]='http://photos.example'"),
    (["*."], r"allowed_hosts\[\]='\*\.'"),
    ([""], r"allowed_hosts\[\]=''"),
    ([8000], r"allowed_hosts\[\]=8000"),
])
def test_allowed_hosts_setting_is_validated(hosts, match):
    from facerec.serve.config import ServeConfig

    with pytest.raises(ConfigError, match=match):
        ServeConfig(gallery_dir="/g", models=[{"name": "a", "checkpoint": "/c"}], allowed_hosts=hosts)


def test_allowed_hosts_defaults_and_cli():
    from facerec.serve.config import ServeConfig, allowed_hosts

    cfg = ServeConfig(gallery_dir="/g", models=[{"name": "a", "checkpoint": "/c"}])
    assert cfg.allowed_hosts == ["localhost", "127.0.0.1", "[::1]"]
    cfg = ServeConfig(gallery_dir="/g", models=[{"name": "a", "checkpoint": "/c"}],
                      allowed_hosts=allowed_hosts("::", ["Photos.Example.", "*.example.org"]))
    assert cfg.allowed_hosts == ["localhost", "127.0.0.1", "[::1]", "[::]", "photos.example", "*.example.org"]
    assert allowed_hosts("192.168.1.5", [])[-1] == "192.168.1.5"


def test_host_names_are_matched_without_port():
    from facerec.serve.middleware import host_allowed, host_name

    assert [host_name(h) for h in ("LOCALHOST:8000", "[::1]:8000", "example.com.", "a:b:c", "[::1]x", "", None)] == \
        ["localhost", "[::1]", "example.com", None, None, None, None]
    allowed = ["localhost", "*.example.org"]
    assert [host_allowed(h, allowed) for h in ("localhost", "a.example.org", "example.org", "evilexample.org")] == \
        [True, True, False, False]


# ---- the "hard" application --------------------------------------------------------------------

@pytest.fixture(scope="module")
def hard(live_app, serve_artifacts, tmp_path_factory):
    """dict(url, base, gallery, client) of an app with a read token and extra host names."""
    import shutil

    from ray import serve

    from facerec.serve.app import ServeConfig, build_app

    gallery = tmp_path_factory.mktemp("hard") / "gallery"
    shutil.copytree(serve_artifacts["gallery"], gallery)
    config = ServeConfig(gallery_dir=str(gallery),
                         models=[{"name": n, "checkpoint": c, "num_cpus": 0.2, "max_batch_size": 4, "torch_threads": 1}
                                 for n, c in serve_artifacts["checkpoints"].items()],  # adds need every gallery model
                         default_model="mnv3",
                         gallery_token=TOKEN, read_token=READ_TOKEN, max_upload_bytes=HARD_UPLOAD,
                         max_inflight_upload_bytes=6_000_000, reload_poll_s=0.25, retriever_num_cpus=0.05,
                         ingress_num_cpus=0.05, allow_untrained=True,
                         allowed_hosts=["localhost", "127.0.0.1", "[::1]", "photos.example", "*.example.org"])
    serve.run(build_app(config), name="hard", route_prefix=PREFIX)
    try:
        with httpx.Client(base_url=live_app["url"] + PREFIX, timeout=120) as c:
            yield {"url": live_app["url"] + PREFIX, "base": live_app["url"], "gallery": gallery, "client": c}
    finally:
        serve.delete("hard")


def _raw(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; the status, headers and body of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(request)
        return read_response(s)


def _two_photos(photos) -> dict:
    return {"image1": ("a.jpg", photos[0][1], "image/jpeg"), "image2": ("b.jpg", photos[1][1], "image/jpeg")}


@pytest.mark.slow
def test_verify_needs_the_read_token_before_its_body(hard, photos):
    c = hard["client"]
    r = c.post("/v1/verify", files=_two_photos(photos))
    assert r.status_code == 401 and r.json() == {"detail": "this server needs a read token: send 'Authorization: "
                                                           "Bearer <token>'", "code": "unauthorized"}, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.post("/v1/verify", files=_two_photos(photos), headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong bearer token"
    # 50 MB declared and not one byte sent: the token is what is answered, from the headers alone
    host = hard["base"].removeprefix("http://")
    head = (f"POST {PREFIX}/v1/verify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 50000000\r\n")
    status, headers, body = _raw(hard["base"], (head + "\r\n").encode())
    assert status == 401 and json.loads(body)["code"] == "unauthorized" and headers["x-content-type-options"] == "nosniff"
    status, _, body = _raw(hard["base"], (head + f"Authorization: Bearer {READ_TOKEN}\r\n\r\n").encode())
    assert status == 413 and json.loads(body)["code"] == "too_large"  # with the token: then the length
    for auth in (READ, AUTH):  # both tokens pass; the model is not calibrated, which is the next answer
        r = c.post("/v1/verify", files=_two_photos(photos), headers=auth)
        assert r.status_code == 409 and r.json()["code"] == "uncalibrated", r.text


_DEEP = b"[" * 100_000 + b"]" * 100_000
_DIGITS = b'{"k": ' + b"9" * 5000 + b"}"


@pytest.mark.slow
@pytest.mark.parametrize("method, path, headers", [
    ("POST", "/v1/search", READ),
    ("POST", "/v1/verify", READ),
    ("POST", "/v1/gallery", AUTH),
    ("PUT", "/v1/gallery/identities/3", AUTH),
])
def test_every_json_route_answers_bad_json_with_the_reason(hard, method, path, headers):
    c = hard["client"]
    h = {**headers, "Content-Type": "application/json"}
    for body, pattern in [(_DEEP, r"^body is nested too deeply: arrays and objects more than 20 levels"),
                          (_DIGITS, r"^body has a number with too many digits \(5,000 in 999999999999\.\.\.999999; "
                                    r"the limit is 100 digits\)$"),
                          (b'{"k": 3,\n  oops}', r"^body is not valid JSON: Expecting property name enclosed in double "
                                                 r"quotes at line 2 column 3$")]:
        r = c.request(method, path, content=body, headers=h)
        assert r.status_code == 400, (path, body[:20], r.text)
        assert r.json()["code"] == "bad_json" and re.search(pattern, r.json()["detail"]), r.json()
        assert set(r.json()) == {"detail", "code"}


def test_reduced_decode_keeps_what_a_face_model_sees(photos):
    """dlib_resnet (a model trained on faces, the served default): the embedding of a 6500 px photo
    decoded at a quarter is the full decode's to a small fraction of its same-person threshold (0.6),
    and no farther from the original photo's embedding than the full decode's is."""
    from facerec.models.pretrained import resolve_checkpoint
    from facerec.serve.embedder import FaceEmbedderCore

    core = FaceEmbedderCore(resolve_checkpoint("dlib_resnet"), runtime="torch", torch_threads=1)
    for _, data in photos[:3]:
        big = _enlarged(data, 6500, 80)
        [original] = core.embed_many([(data, "largest", False)])
        [reduced] = core.embed_many([(big, "largest", False)])
        core.decode_min_side = None
        [whole] = core.embed_many([(big, "largest", False)])
        core.decode_min_side = 1600
        e0, er, ew = (r["faces"][0]["embedding"] for r in (original, reduced, whole))
        assert np.linalg.norm(er - ew) < 0.05
        assert np.linalg.norm(er - e0) <= np.linalg.norm(ew - e0) + 0.02


@pytest.mark.slow
def test_a_large_jpeg_is_searched_reduced_and_answered_in_its_pixels(hard, serve_artifacts, photos):
    """A 6500 px photo is answered with its size and its box in its own pixels, and the hits are
    those of the reduced decode's embedding searched exactly (in this process)."""
    from facerec.detect import DetectorConfig
    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.serve.retriever import RetrieverCore

    big = _enlarged(photos[2][1], 6500, 80)
    assert len(big) < HARD_UPLOAD
    full = decode_image(big)
    ref_box = DetectorConfig().build().find(full).boxes[0]
    r = hard["client"].post("/v1/search", files={"image": ("big.jpg", big, "image/jpeg")}, data={"k": "3"}, headers=READ)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": full.shape[1], "height": full.shape[0]}
    box = body["faces"][0]["box"]
    assert all(abs(b - ref) <= 0.03 * ref_box[2] + 8 for b, ref in zip((box["x"], box["y"], box["w"], box["h"]), ref_box))
    core = FaceEmbedderCore(serve_artifacts["checkpoints"]["mnv3"], crop_size=218, margin=0.2, torch_threads=1)
    [mine] = core.embed_many([(big, "largest", False)])
    hits = RetrieverCore(str(hard["gallery"]), serve_artifacts["model_ids"]).search(
        "mnv3", mine["faces"][0]["embedding"][None], 3)["results"][0]
    assert [h["image_id"] for h in body["faces"][0]["results"]] == [h["image_id"] for h in hits]
    np.testing.assert_allclose([h["distance"] for h in body["faces"][0]["results"]], [h["distance"] for h in hits], atol=1e-4)


@pytest.mark.slow
def test_base64_wrapped_at_76_columns_is_read_and_a_number_is_named(hard, photos):
    c = hard["client"]
    name, data = photos[4]
    wrapped = base64.encodebytes(data).decode()  # what `base64 photo.jpg` prints: 76 columns, "\n"
    assert "\n" in wrapped.strip()
    for text in (wrapped, wrapped.replace("\n", "\r\n"), " ".join(wrapped.split("\n"))):
        r = c.post("/v1/search", json={"image_base64": text, "k": 2}, headers=READ)
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["results"][0]["image_id"] == served_ids(hard["gallery"])[name]
    r = c.post("/v1/search", json={"image_base64": 123}, headers=READ)
    assert r.status_code == 422 and r.json() == {"detail": "image_base64 must be a string of base64 text (got a number)",
                                                 "code": "bad_parameter"}
    r = c.post("/v1/search", json={"image_base64": "%%%not base64"}, headers=READ)
    assert r.status_code == 400 and r.json()["code"] == "bad_base64"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
@pytest.mark.parametrize("text", ["1_000", "42.0", "+7", "007", " 7", "0x10", "1e3", "٣"])
def test_form_identity_is_a_plain_decimal_integer_as_in_json(hard, photos, text):
    before = _tree(hard["gallery"])
    r = hard["client"].post("/v1/gallery", headers=AUTH, data={"identity": text},
                            files={"image": ("a.jpg", photos[5][1], "image/jpeg")})
    assert r.status_code == 422 and r.json()["code"] == "bad_parameter", r.text
    assert r.json()["detail"] == f"field identity: Input should be a plain decimal integer, like 42 (got {text!r})"
    assert _tree(hard["gallery"]) == before


@pytest.mark.slow
def test_json_identity_42_0_is_refused_like_the_form(hard, photos):
    r = hard["client"].post("/v1/gallery", headers=AUTH,
                            json={"identity": 42.0, "images_base64": [base64.b64encode(photos[5][1]).decode()]})
    assert r.status_code == 422 and r.json()["detail"] == "identity: Input should be a valid integer (got 42.0)", r.text


@pytest.mark.slow
def test_the_same_photo_under_a_second_identity_is_added_with_a_warning(hard, photos):
    from facerec.detect import DetectorConfig
    from facerec.gallery import read_table

    det = DetectorConfig().build()
    photo = next(p for p in (encode_jpeg(np.ascontiguousarray(decode_image(d)[:, ::-1]), quality=86) for _, d in photos[6:])
                 if len(det.find(decode_image(p))))  # a photo not in the gallery yet, with an accepted face
    c = hard["client"]
    first = c.post("/v1/gallery", headers=AUTH, data={"identity": "7001"}, files={"image": ("a.jpg", photo, "image/jpeg")})
    assert first.status_code == 201 and first.json()["warnings"] == [], first.text
    second = c.post("/v1/gallery", headers=AUTH, data={"identity": "7002"},
                    files=[("image", ("b.jpg", photo, "image/jpeg")), ("image", ("c.jpg", photos[7][1], "image/jpeg"))])
    assert second.status_code == 201, second.text
    body = second.json()
    assert body["added"] == 2 and body["duplicate_of"] == [None, None]  # added all the same: it may be a relabelling
    [w] = [w for w in body["warnings"] if w["image"] == 0]
    old_id = first.json()["image_ids"][0]
    assert w == {"image": 0, "code": "same_photo_other_identity", "image_id": old_id, "identity": 7001,
                 "message": f"image 0 is the same photo as gallery image {old_id} of identity 7001; it was added to "
                            f"identity 7002 as well: delete one of them if that is a mistake"}
    table = read_table(hard["gallery"])
    assert set(table[table["image_id"].isin([old_id, body["image_ids"][0]])]["identity"]) == {7001, 7002}


@pytest.mark.slow
def test_host_header_names_a_configured_host_or_is_refused(hard, live_app):
    port = hard["base"].rsplit(":", 1)[1]
    for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}", "photos.example", "PHOTOS.EXAMPLE.:80",
                 "a.example.org"):
        r = hard["client"].get("/v1/models", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "example.org", "photos.example:x"):
        r = hard["client"].get("/v1/models", headers={"Host": host})
        assert r.status_code == 400 and r.json()["code"] == "bad_host", (host, r.text)
        assert r.headers["content-type"] == "application/json" and r.headers["x-frame-options"] == "DENY"
        assert "models" not in r.text and "mnv3" not in r.text
    assert r.json()["detail"].startswith("this server does not answer for Host 'photos.example:x'")
    # the live app has the default: its loopback names only
    r = httpx.get(live_app["url"] + "/v1/models", headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["detail"] == (
        "this server does not answer for Host 'evil.example'; if that is a name of this server, add it to its allowed "
        "hosts (facerec serve --allowed-host NAME, or allowed_hosts in the config)")
    assert httpx.get(live_app["url"] + "/", headers={"Host": f"localhost:{port}"}).status_code == 200
    # a foreign host is refused before its token or body are looked at, and a request without Host too
    status, _, body = _raw(hard["base"], f"POST {PREFIX}/v1/gallery HTTP/1.1\r\nHost: evil.example\r\nContent-Length: "
                                         f"50000000\r\n\r\n".encode())
    assert status == 400 and json.loads(body)["code"] == "bad_host"
    status, _, body = _raw(hard["base"], f"GET {PREFIX}/v1/models HTTP/1.0\r\n\r\n".encode())
    assert status == 400 and json.loads(body) == {"detail": "the request has no Host header", "code": "bad_host"}


@pytest.mark.slow
def test_head_of_the_page_and_method_before_auth(hard):
    c = hard["client"]
    for url in (hard["base"] + "/", hard["url"] + "/"):
        get, head = httpx.get(url), httpx.head(url)
        assert head.status_code == 200 and head.content == b"", url
        assert head.headers["content-type"].startswith("text/html") and get.status_code == 200
        assert int(head.headers["content-length"]) == len(get.content)
    for method, path in [("PATCH", "/v1/gallery"), ("PUT", "/v1/gallery"), ("PATCH", "/v1/search"),
                         ("PUT", "/v1/verify"), ("PATCH", "/v1/gallery/identities/5")]:
        r = c.request(method, path, content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed", (method, path, r.text)
    # the real routes still want their token
    assert c.post("/v1/gallery", data={"identity": "1"}, files={"image": ("a.jpg", b"x", "image/jpeg")}).status_code == 401
    assert c.put("/v1/gallery/identities/5", json={"display_name": "x"}).status_code == 401
    assert c.post("/v1/search", content=b"x", headers={"Content-Type": "image/jpeg"}).status_code == 401


@pytest.mark.slow
def test_serves_own_routes_carry_the_security_headers_and_nothing_sensitive(live_app, hard):
    from facerec.serve.middleware import SECURITY_HEADERS

    routes = httpx.get(live_app["url"] + "/-/routes")
    health = httpx.get(live_app["url"] + "/-/healthz")
    for r in (routes, health):
        assert r.status_code == 200, r.text
        for k, v in SECURITY_HEADERS.items():
            assert r.headers[k] == v, (r.url, k)
    # route prefix -> application name, nothing else (no paths, tokens or node addresses)
    assert {("/", "facerec"), (PREFIX, "hard")} <= set(routes.json().items())
    assert all(re.fullmatch(r"/[a-z]*", k) and re.fullmatch(r"[a-z]+", v) for k, v in routes.json().items())
    assert health.text == "success"
    # the app's own answers carry each header once (the proxy adds only what is missing)
    page = httpx.get(live_app["url"] + "/")
    assert page.headers.get_list("x-frame-options") == ["DENY"]
