"""The web page at / in a real headless Chromium (Debian's, driven by Playwright) against the
real Serve app: upload a photo, see the box drawn and the 3x3 grid of the top 9; a photo
without a face shows the error; the camera path (getUserMedia, fed a face video) works."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import served_ids

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _y4m(rgb: np.ndarray, frames: int = 3) -> bytes:
    """A tiny Y4M video (what Chromium's fake camera plays) showing ``rgb`` centred in 640x480."""
    import cv2

    canvas = np.full((480, 640, 3), 110, dtype=np.uint8)
    h = 480
    w = int(round(rgb.shape[1] * h / rgb.shape[0]))
    canvas[:, (640 - w) // 2:(640 - w) // 2 + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    yuv = cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420).tobytes()
    return b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420jpeg\n" + b"".join(b"FRAME\n" + yuv for _ in range(frames))


@pytest.fixture(scope="module")
def browser(photos, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not found at /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    from facerec.data.images import decode_image

    video = tmp_path_factory.mktemp("cam") / "face.y4m"
    video.write_bytes(_y4m(decode_image(photos[1][1])))
    fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                   f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS + fake_camera)
        try:
            yield b
        finally:
            b.close()


# Playwright's wait_for_function evaluates its predicate with eval(), which the page's
# Content-Security-Policy forbids; test_page_works_under_its_csp runs the page under the real policy.
NO_CSP = {"bypass_csp": True}


@pytest.fixture
def page(browser, live_app):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **NO_CSP)
    pg = ctx.new_page()
    pg.goto(live_app["url"] + "/")
    pg.wait_for_function("document.querySelectorAll('#model option').length === 2", timeout=60_000)
    yield pg
    ctx.close()


def _read_grid(page) -> list[dict]:
    page.wait_for_function("document.querySelectorAll('#results .result').length === 9", timeout=120_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
    return page.evaluate("""[...document.querySelectorAll('#results .result')].map(li => ({
        rank: +li.dataset.rank, image_id: li.dataset.imageId, distance: +li.dataset.distance,
        text: li.innerText, top: li.getBoundingClientRect().top, left: li.getBoundingClientRect().left}))""")


@pytest.mark.parametrize("model", ["mnv3", "r18"])
def test_upload_shows_box_and_top9(page, live_app, photos, model):
    name, data = photos[0]
    page.select_option("#model", model)
    page.set_input_files("#file", files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": data}])
    grid = _read_grid(page)
    api = httpx.post(live_app["url"] + "/v1/search", files={"image": ("q.jpg", data, "image/jpeg")},
                     data={"k": "9", "model": model}, timeout=120).json()
    hits = api["faces"][0]["results"]
    assert [g["rank"] for g in grid] == list(range(1, 10))
    assert [g["image_id"] for g in grid] == [h["image_id"] for h in hits]
    np.testing.assert_allclose([g["distance"] for g in grid], [h["distance"] for h in hits], rtol=1e-6)
    assert grid[0]["image_id"] == served_ids(live_app["gallery"])[name]
    # plain words on the card, the number on hover
    assert "#1" in grid[0]["text"] and f"person {hits[0]['identity']}" in grid[0]["text"] and "d=" not in grid[0]["text"]
    assert page.get_attribute("#results .result", "title").startswith(f"distance {hits[0]['distance']:.3f}")
    # a 3 x 3 grid: three distinct rows and columns
    assert len({round(g["top"]) for g in grid}) == 3 and len({round(g["left"]) for g in grid}) == 3
    status = page.inner_text("#status")
    assert "1 face found" in status and f"({model}," in status
    # the face box is drawn in green on the preview, at the box the API reports
    box = api["faces"][0]["box"]
    px = page.evaluate(f"""(() => {{ const c = document.getElementById('preview');
        return [c.width, c.height, ...c.getContext('2d').getImageData({box['x']}, {box['y'] + box['h'] // 2}, 1, 1).data]; }})()""")
    assert px[:2] == [api["image"]["width"], api["image"]["height"]]
    assert px[3] > 200 and px[2] < 60 and px[4] < 160  # (0, 230, 118): the active-face stroke


def test_several_faces_are_numbered_on_the_photo(page, live_app, photos):
    """With faces=all each box carries the number of its "face N" button (green for the face whose
    results are shown, amber for the others), and choosing a button moves the green."""
    import cv2

    from facerec.data.images import decode_image

    a, b = decode_image(photos[0][1]), decode_image(photos[1][1])
    h = max(a.shape[0], b.shape[0])
    pad = lambda im: np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=110)  # noqa: E731
    mosaic = np.concatenate([pad(a), np.full((h, 40, 3), 110, np.uint8), pad(b)], axis=1)
    data = cv2.imencode(".jpg", cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    api = httpx.post(live_app["url"] + "/v1/search", files={"image": ("q.jpg", data, "image/jpeg")},
                     data={"k": "9", "faces": "all"}, timeout=120).json()
    boxes = [f["box"] for f in api["faces"]]
    assert len(boxes) >= 2, api
    page.select_option("#faces", "all")
    page.set_input_files("#file", files=[{"name": "two.jpg", "mimeType": "image/jpeg", "buffer": data}])
    _read_grid(page)
    tabs = page.evaluate("[...document.querySelectorAll('#face-tabs button')].map(b => [b.textContent, b.title])")
    assert tabs == [[f"face {i + 1}", f"the face in the box marked {i + 1} on the photo"] for i in range(len(boxes))]

    def label_pixel(box):  # inside the number's tag, just above the box's top-left corner
        y = max(0, box["y"] - 4)
        return page.evaluate(f"""[...document.getElementById('preview').getContext('2d')
            .getImageData({box['x'] + 2}, {y}, 1, 1).data]""")

    green = lambda px: px[1] > 200 and px[0] < 60  # noqa: E731  (0, 230, 118)
    amber = lambda px: px[0] > 200 and 140 < px[1] < 200 and px[2] < 60  # noqa: E731  (255, 171, 0)
    assert green(label_pixel(boxes[0])) and amber(label_pixel(boxes[1]))
    page.click("#face-tabs button:nth-child(2)")
    assert amber(label_pixel(boxes[0])) and green(label_pixel(boxes[1]))
    assert page.get_attribute("#face-tabs button:nth-child(2)", "aria-pressed") == "true"


def test_no_face_shows_error(page, bad_images):
    page.set_input_files("#file", files=[{"name": "wall.jpg", "mimeType": "image/jpeg", "buffer": bad_images["no_face"][0]}])
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=120_000)
    assert "Error 422: no face in the" in page.inner_text("#status")
    assert page.evaluate("document.querySelectorAll('#results .result').length") == 0


def test_camera_capture(page, photos):
    page.click("#camera-start")
    page.wait_for_function("document.getElementById('video').videoWidth === 640", timeout=60_000)
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as resp:
        page.click("#camera-shoot")
    assert resp.value.status == 200, resp.value.text()
    body = resp.value.json()
    grid = _read_grid(page)
    # the page shows exactly the answer to the captured frame ...
    assert [g["image_id"] for g in grid] == [h["image_id"] for h in body["faces"][0]["results"]]
    # ... a full 640x480 camera frame, whose face (drawn in the middle third) was detected
    assert body["image"] == {"width": 640, "height": 480}
    box = body["faces"][0]["box"]
    assert 124 <= box["x"] and box["x"] + box["w"] <= 516 and box["w"] >= 80
    assert page.evaluate("document.getElementById('preview').width") == 640
    assert page.evaluate("document.getElementById('video').hidden") is True


# --------------------------------------------------------------------------------------------
# Hardening (issue 13): at a desktop width and at a phone's 390 px
# --------------------------------------------------------------------------------------------

WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=list(WIDTHS))
def sized_page(request, browser, live_app):
    ctx = browser.new_context(viewport=WIDTHS[request.param], **NO_CSP)
    pg = ctx.new_page()
    pg.goto(live_app["url"] + "/")
    pg.wait_for_function("document.querySelectorAll('#model option').length === 2", timeout=60_000)
    yield pg
    ctx.close()


def _upload(page, data: bytes, name: str = "query.jpg", mime: str = "image/jpeg"):
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def _wait_error(page) -> str:
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=120_000)
    return page.inner_text("#status")


def test_failed_upload_clears_the_previous_photo(sized_page, photos, bad_images):
    page = sized_page
    _upload(page, photos[0][1])
    _read_grid(page)
    assert page.evaluate("document.getElementById('preview').width") > 0
    _upload(page, bad_images["not_an_image"][0], "notes.jpg")
    text = _wait_error(page)
    assert text.startswith("Error 400: ") and 'it starts with the text "hello, t"' in text, text
    assert "b'" not in text and "Traceback" not in text
    # no earlier photo, no earlier results beside the new error
    assert page.evaluate("document.getElementById('preview').width") == 0
    assert page.evaluate("document.getElementById('preview').getBoundingClientRect().height") == 0
    assert page.evaluate("document.querySelectorAll('#results .result').length") == 0


def test_errors_are_texts_for_people(sized_page, bad_images):
    page = sized_page
    _upload(page, bad_images["decompression_bomb"][0], "bomb.png", "image/png")
    text = _wait_error(page)
    assert re.fullmatch(r"Error 413: \w+: (10000x10000 = )?100,000,000 pixels exceeds the limit of 40,000,000 pixels; "
                        r"send a smaller image", text), text
    assert "DOS" not in text and "decompression bomb" not in text


def test_grid_fits_the_screen(sized_page, photos):
    page = sized_page
    _upload(page, photos[0][1])
    grid = _read_grid(page)
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no horizontal scrolling
    rights = page.evaluate("[...document.querySelectorAll('#results .result')].map(li => li.getBoundingClientRect().right)")
    assert max(rights) <= width
    assert len({round(g["left"]) for g in grid}) == 3 and len({round(g["top"]) for g in grid}) == 3  # still 3 x 3
    assert page.evaluate("document.getElementById('preview').getBoundingClientRect().right") <= width


def test_the_answer_comes_first_and_the_model_card_is_folded(sized_page, photos):
    """On a phone the results sit right under the status, above the photo and the model card
    (folded under "About this model"); on a desktop the photo is beside them, on their left."""
    page = sized_page
    _upload(page, photos[0][1])
    _read_grid(page)
    top = {sel: page.evaluate(f"document.querySelector('{sel}').getBoundingClientRect().top")
           for sel in ("#status", "#results", "#preview", "#about-model")}
    assert top["#status"] < top["#results"] < top["#about-model"]
    assert page.evaluate("document.getElementById('about-model').open") is False
    assert page.is_hidden("#model-card")  # folded: one click away
    # the test's models are untrained: the fold itself says so
    assert page.inner_text("#about-model summary") == "About this model — warning: it was never trained on faces"
    page.click("#about-model summary")
    assert page.is_visible("#model-card") and "Weights:" in page.inner_text("#model-card")
    if page.viewport_size["width"] < 500:
        assert top["#results"] < top["#preview"]
        # the first row of results is on the first screen
        assert page.evaluate("document.querySelector('#results .result').getBoundingClientRect().bottom") \
            <= page.viewport_size["height"]
    else:
        left = {sel: page.evaluate(f"document.querySelector('{sel}').getBoundingClientRect().left") for sel in ("#results", "#preview")}
        assert left["#preview"] < left["#results"] and abs(top["#preview"] - top["#results"]) < 60


def test_enter_in_the_token_field_searches_again(sized_page, photos):
    page = sized_page
    _upload(page, photos[0][1])
    _read_grid(page)
    page.evaluate("document.getElementById('token-label').hidden = false")
    page.fill("#token", "")
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as resp:
        page.press("#token", "Enter")
    assert resp.value.status == 200


def test_changing_the_model_searches_again(sized_page, live_app, photos):
    page = sized_page
    data = photos[2][1]
    _upload(page, data)
    first = _read_grid(page)
    assert "(mnv3," in page.inner_text("#status")
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as resp:
        page.select_option("#model", "r18")
    assert resp.value.status == 200
    page.wait_for_function("document.getElementById('status').innerText.includes('(r18,')", timeout=120_000)
    grid = _read_grid(page)
    api = httpx.post(live_app["url"] + "/v1/search", files={"image": ("q.jpg", data, "image/jpeg")},
                     data={"k": "9", "model": "r18"}, timeout=120).json()
    assert [g["image_id"] for g in grid] == [h["image_id"] for h in api["faces"][0]["results"]]
    np.testing.assert_allclose([g["distance"] for g in grid], [h["distance"] for h in api["faces"][0]["results"]], rtol=1e-6)
    assert [g["distance"] for g in grid] != [g["distance"] for g in first]  # another model, other distances


def test_docs_work_with_the_network_blocked(browser, live_app):
    ctx = browser.new_context(viewport=WIDTHS["desktop"])
    outside: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(live_app["url"]):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    ctx.route("**/*", only_the_server)
    try:
        page = ctx.new_page()
        page.goto(live_app["url"] + "/docs")
        page.wait_for_load_state("networkidle")
        spec = httpx.get(live_app["url"] + "/openapi.json", timeout=60).json()
        text = page.inner_text("body")
        for path, item in spec["paths"].items():
            for method in item:
                assert page.locator(f"section.op:has-text('{method.upper()}'):has-text('{path}')").count() >= 1, (method, path)
        assert "POST /v1/search" in text.replace("\n", " ") or "POST\n/v1/search" in text or "/v1/search" in text
        # the stylesheet arrived (styled), and nothing was asked of any other host
        assert page.evaluate("getComputedStyle(document.querySelector('.op')).borderTopStyle") == "solid"
        assert outside == []
    finally:
        ctx.close()


def test_page_works_under_its_csp(browser, live_app, photos):
    """The served Content-Security-Policy (scripts, styles, images only from the server, blob:
    previews) lets the page do its whole job, and the browser reports no violation."""
    ctx = browser.new_context(viewport=WIDTHS["desktop"])
    violations: list[str] = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        response = page.goto(live_app["url"] + "/")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        _upload(page, photos[0][1])
        deadline = time.time() + 120
        while time.time() < deadline and page.evaluate(
                "[...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth > 0).length") < 9:
            time.sleep(0.2)
        assert page.evaluate("document.querySelectorAll('#results .result').length") == 9
        assert page.evaluate("document.getElementById('preview').width") > 0  # the blob: preview was drawn
        assert violations == []
    finally:
        ctx.close()
