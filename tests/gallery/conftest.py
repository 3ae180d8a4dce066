"""Synthetic galleries for the gallery package tests: random unit embeddings of two models,
identities in blocks, and small PNG crops with a unique pattern each (so a test can look for a
deleted crop's bytes in every file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def png(seed: int, side: int = 24) -> bytes:
    from facerec.data.images import encode_png

    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))


def unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_gallery(out: Path, n: int = 60, dims=(("a", 16), ("b", 8)), kinds=("exact",), per_identity: int = 5,
                 seed: int = 0, index_params=None) -> dict:
    """A gallery of ``n`` rows written through facerec.gallery.build.write_gallery; returns
    dict(embeddings {model: (n, d)}, identities (n,), crops [bytes], manifest)."""
    from facerec.gallery.build import write_gallery
    from facerec.gallery.edit import make_rows
    from facerec.gallery.format import crop_rel, new_image_id

    rng = np.random.default_rng(seed)
    emb = {m: unit(rng, n, d) for m, d in dims}
    identities = np.arange(n) // per_identity + 100
    crops = [png(seed * 100_000 + i) for i in range(n)]
    ids = [new_image_id() for _ in range(n)]
    (out / "crops").mkdir(parents=True)
    for i, c in zip(ids, crops):
        (out / crop_rel(i, ".png")).write_bytes(c)
    rows = make_rows(np.arange(n), identities, ids, [".png"] * n, 0, source_ids=[f"{i:06d}.jpg" for i in range(n)])
    models = {m: {"model_id": f"id-{m}", "embedding_dim": d} for m, d in dims}
    manifest = write_gallery(out, rows, emb, models, list(kinds), index_params or {})
    return {"embeddings": emb, "identities": identities, "crops": crops, "manifest": manifest, "image_ids": ids}


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    out = []
    for p in Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle in p.read_bytes():
                    out.append(str(p))
            except OSError:
                pass
    return out


@pytest.fixture
def small_gallery(tmp_path):
    g = tmp_path / "gallery"
    info = make_gallery(g)
    info["dir"] = g
    return info
