"""Fixtures of the serve tests: a tiny real gallery (synthetic photos -> face crops -> two small
untrained CNNs, batch norms recalibrated) and, for the HTTP/browser tests, one real Serve app on
a local 2-CPU Ray cluster shared by the whole session and shut down at its end."""

from __future__ import annotations

import shutil
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest

IMAGE_SIZE = 64
EMBED_DIM = 32
BACKBONES = {"mnv3": "mobilenet_v3_small", "r18": "resnet18"}
TOKEN = "test-token-0123456789"
MAX_UPLOAD = 300_000
# Upload bytes in flight per Ingress replica: two searches near the upload limit fill it (the
# UploadGate tests); the suite's concurrent searches of small photos stay far below it.
MAX_INFLIGHT = 1_000_000


def _synthetic_photos(root: Path) -> Path:
    """6 synthetic people x 4 photos in the CelebA layout."""
    from facerec.data.synth import generate_synthetic

    return Path(generate_synthetic(root, n_identities=6, images_per_identity=4, seed=3))


@pytest.fixture(scope="session")
def serve_artifacts(tmp_path_factory):
    """dict(photos, crops, checkpoints {name: dir}, gallery (pristine copy), model_ids)."""
    import torch

    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.models import read_checkpoint_metadata
    from facerec.serve.defaults import make_default_checkpoint
    from facerec.gallery import GalleryBuildConfig, build_gallery

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("serve")
    photos = _synthetic_photos(base / "photos")
    crops = base / "crops"
    preprocess(photos, crops, PreprocessConfig(engine="local"), progress=False)
    checkpoints = {}
    for name, backbone in BACKBONES.items():
        make_default_checkpoint(backbone, base / "ckpt" / name, crops, image_size=IMAGE_SIZE, embedding_dim=EMBED_DIM)
        checkpoints[name] = str(base / "ckpt" / name)
    gallery = base / "gallery"
    build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(gallery), checkpoints=checkpoints, kinds=["kdtree"]))
    return {
        "base": base,
        "photos": photos,
        "crops": crops,
        "checkpoints": checkpoints,
        "gallery": gallery,
        "model_ids": {n: read_checkpoint_metadata(p)["model_id"] for n, p in checkpoints.items()},
    }


def served_ids(gallery: Path) -> dict[str, str]:
    """Photo file name (the crops folder's image_id, kept as source_id) -> served image id."""
    from facerec.gallery import read_table

    table = read_table(gallery)
    return dict(zip(table["source_id"], table["image_id"]))


@pytest.fixture
def gallery_copy(serve_artifacts, tmp_path) -> Path:
    """A private, writable copy of the test gallery."""
    dst = tmp_path / "gallery"
    shutil.copytree(serve_artifacts["gallery"], dst)
    return dst


def _blank_jpeg(w: int = 160, h: int = 120) -> bytes:
    from facerec.data.images import encode_jpeg

    return encode_jpeg(np.full((h, w, 3), 128, dtype=np.uint8), quality=90)


def _png_bomb(side: int = 10_000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (100 M for 10 000) in about 12 KB: what a
    decompression bomb looks like. Decoding it must be refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def photos(serve_artifacts) -> list[tuple[str, bytes]]:
    """(file name, JPEG bytes) of synthetic photos whose gallery crop is exactly what serving
    crops (the largest accepted face of the served detector is preprocess's box), so a query with
    the photo finds its own crop first."""
    import pandas as pd

    from facerec.data.images import decode_image
    from facerec.detect import DetectorConfig

    crops = pd.read_parquet(serve_artifacts["crops"] / "crops.parquet").set_index("image_id")
    det = DetectorConfig().build()
    out = []
    for p in sorted((serve_artifacts["photos"] / "img_celeba").iterdir()):
        if p.name not in crops.index:
            continue
        boxes = det.find(decode_image(p.read_bytes())).boxes
        row = crops.loc[p.name]
        if len(boxes) and [int(round(v)) for v in boxes[0]] == [int(row.box_x), int(row.box_y), int(row.box_w), int(row.box_h)]:
            out.append((p.name, p.read_bytes()))
    assert len(out) >= 12, f"only {len(out)} usable synthetic photos; the detector misses the drawing"
    return out


@pytest.fixture(scope="session")
def bad_images() -> dict[str, tuple[bytes, int, str]]:
    """name -> (body, expected HTTP status, regex the message must match)."""
    return {
        "not_an_image": (b"hello, this is text", 400, "not a recognised image"),
        "truncated_jpeg": (_blank_jpeg()[:200], 400, "damaged or truncated|not a recognised"),
        "empty": (b"", 400, "empty"),
        "decompression_bomb": (_png_bomb(), 413, "exceeds the limit|decompression|pixels"),
        "no_face": (_blank_jpeg(), 422, "no face in the 160x120 image: no face was found"),
    }


@pytest.fixture(scope="package")
def live_app(serve_artifacts, tmp_path_factory, free_port):
    """A running Serve app (both models, token, small upload limit, fast reload polling) on a
    private gallery copy. Yields dict(url, gallery, config)."""
    import ray
    from ray import serve

    from facerec.serve.app import ServeConfig, build_app

    gallery = tmp_path_factory.mktemp("live") / "gallery"
    shutil.copytree(serve_artifacts["gallery"], gallery)
    config = ServeConfig(
        gallery_dir=str(gallery),
        models=[{"name": n, "checkpoint": c, "num_cpus": 0.5, "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                 "torch_threads": 1} for n, c in serve_artifacts["checkpoints"].items()],
        default_model="mnv3",
        gallery_token=TOKEN,
        max_upload_bytes=MAX_UPLOAD,
        max_inflight_upload_bytes=MAX_INFLIGHT,
        reload_poll_s=0.5,
        retriever_num_cpus=0.1,
        ingress_num_cpus=0.1,
        allow_untrained=True,  # small untrained models keep the suite fast; their answers are not checked
    )
    from facerec.serve.app import check_fits

    port = free_port()
    started = not ray.is_initialized()  # another suite's session cluster is reused, not killed
    if started:
        from facerec.serve.runtime import apply_serve_env

        apply_serve_env()  # the tests run the production request path
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        check_fits(config, ray.available_resources())  # a clear error instead of Serve waiting forever
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="facerec", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "gallery": gallery, "config": config, "app_name": "facerec"}
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
