from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# ../shared/data next to the checkout, or $FACEREC_SHARED/data (point it at an empty folder to run
# the suite as a clean clone elsewhere would: every real-data test then skips).
SHARED = Path(os.environ.get("FACEREC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"

# dataset -> a file every copy of it has
SHARED_SETS = {"celeba-sample": "identity_CelebA.txt", "lfw-sample": "pairs.txt"}
SHARED_FIXTURES = {"celeba_sample": "celeba-sample", "lfw_sample": "lfw-sample"}


def shared_dataset(name: str) -> Path:
    """``SHARED/name``, or a skip saying where it was looked for. The one place tests find real data."""
    path = SHARED / name
    if not (path / SHARED_SETS[name]).is_file():
        pytest.skip(f"real data {name} not found at {path} (a clone without ../shared/data); "
                    "set FACEREC_SHARED to the folder holding data/")
    return path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


@pytest.fixture(scope="session")
def free_port():
    """A function that hands out a TCP port on 127.0.0.1 that nothing listens on, never the same twice.

    Ports come from above Ray's default worker range (10002-19999) and below the kernel's ephemeral range.
    A port the kernel picked for ``bind(0)`` lies inside the ephemeral range, so between the probe and the
    server's own bind any outgoing connection (Ray's gRPC clients open many) may take it: that raced in CI
    ("Failed to bind to address"). Outside that range only a listener can take the port.
    """
    given: set[int] = set()
    rng = random.Random(os.getpid())
    high = min(_ephemeral_low(), 32768) - 1

    def pick() -> int:
        for _ in range(500):
            port = rng.randint(20000, high)
            if port in given:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            given.add(port)
            return port
        raise RuntimeError(f"no free TCP port found in 20000-{high}")

    return pick


# Tests whose tiny forward/backward passes run in the test process (folders, or one module).
ONE_TORCH_THREAD = ("losses/", "models/", "eval/", "metrics/", "dlibport/test_resnet.py", "gallery/test_embed.py",
                    "gallery/test_build_index.py", "cli/test_calibrate.py")


@pytest.fixture(autouse=True)
def single_torch_thread(request):
    """One intra-op thread for the tests of :data:`ONE_TORCH_THREAD`: on a small shared CPU,
    torch's spinning worker threads make these tiny forward/backward passes 10-50x slower under
    contention, not faster. Other tests are left alone (and need not import torch)."""
    where = request.path.relative_to(Path(__file__).parent).as_posix()
    if not where.startswith(ONE_TORCH_THREAD):
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def celeba_sample() -> Path:
    """../shared/data/celeba-sample (skips when absent); tests using it carry @pytest.mark.shared."""
    return shared_dataset("celeba-sample")


@pytest.fixture(scope="session")
def lfw_sample() -> Path:
    """../shared/data/lfw-sample (skips when absent); tests using it carry @pytest.mark.shared."""
    return shared_dataset("lfw-sample")


def pytest_collection_modifyitems(config, items):
    """A test that reads ../shared/data without the ``shared`` marker would run under
    ``-m "not shared"`` and then skip (or fail) for a reason the marker exists to state: refuse it."""
    unmarked = [item.nodeid for item in items
                if set(SHARED_FIXTURES) & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("shared") is None]
    if unmarked:
        raise pytest.UsageError("tests using ../shared/data without @pytest.mark.shared: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def synthetic_faces(tmp_path_factory) -> dict:
    """Photos the tests draw themselves (facerec.data.synth: 8 people x 4 photos, seed 0) in the
    official CelebA layout, for the stages the real-data tests also check: ``root`` and
    ``one_face``, the photos in which OpenCV's cascade at the preprocess defaults (scale 1.1,
    5 neighbours, 24 px; the first pass of the registry's ``haar``) finds exactly one face, in file order."""
    import cv2

    from facerec.data.synth import SynthConfig, count_faces, generate_synthetic, screening_detector

    root = generate_synthetic(tmp_path_factory.mktemp("synthetic") / "faces", 8, 4, seed=0, progress=False)
    haar = screening_detector(SynthConfig(8, 4, seed=0))
    one_face = [p for p in sorted((root / "img_celeba").glob("*.jpg"))
                if count_faces(haar, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) == 1]
    assert len(one_face) >= 24, f"only {len(one_face)} of 32 synthetic photos have one face for the cascade"
    return {"root": root, "one_face": one_face}


# A tiny crops folder written directly in the preprocess layout (no detection pass needed), a small
# checkpoint, the same forward pass done in process for reference, and a 2-CPU Ray cluster per
# test module: the embedding tests of facerec.gallery, and the tables, LFW and calibrate tests.
CROP = 32            # crop side of the tiny folder
IMAGE_SIZE = 32      # model input
EMBED_DIM = 16
N_IDS, PER_ID = 8, 4
DATA_VERSION = "tinycrops-v1"
SPLIT = {"mode": "random", "val_fraction": 0.25, "test_fraction": 0.5, "seed": 0}


def write_crops(root: Path, n_ids: int = N_IDS, per_id: int = PER_ID, seed: int = 0,
                data_version: str = DATA_VERSION) -> Path:
    """``root/crops.parquet`` + ``root/crops/*.jpg``: identity i has its own colour pattern,
    each image a little noise and shift, and random -1/1 attributes."""
    from facerec.data.images import encode_jpeg
    from facerec.data.schema import ATTRIBUTE_NAMES
    from facerec.io import atomic_write_parquet

    rng = np.random.default_rng(seed)
    (root / "crops").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:CROP, 0:CROP] / CROP
    rows = []
    n = 0
    for ident in range(1, n_ids + 1):
        base = rng.uniform(0, 255, size=3)
        freq = rng.uniform(1, 6, size=2)
        for _ in range(per_id):
            n += 1
            phase = rng.uniform(0, 0.3)
            pattern = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy + phase))
            img = base[None, None, :] * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 8, size=(CROP, CROP, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            name = f"{n:06d}.jpg"
            (root / "crops" / name).write_bytes(encode_jpeg(img, 95))
            row = {"image_id": name, "identity": ident, "partition": -1, "crop_path": f"crops/{name}",
                   "box_x": 0, "box_y": 0, "box_w": CROP, "box_h": CROP, "haar_pass": 1, "orig_w": CROP, "orig_h": CROP}
            row.update({a: int(v) for a, v in zip(ATTRIBUTE_NAMES, rng.choice([-1, 1], size=len(ATTRIBUTE_NAMES)))})
            rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("box_x", "box_y", "box_w", "box_h", "orig_w", "orig_h"):
        df[c] = df[c].astype(np.int32)
    for c in ("partition", "haar_pass") + tuple(ATTRIBUTE_NAMES):
        df[c] = df[c].astype(np.int8)
    df["identity"] = df["identity"].astype(np.int64)
    atomic_write_parquet(root / "crops.parquet", df, metadata={
        "data_version": data_version, "crop_size": CROP, "margin": 0.2, "attribute_names": list(ATTRIBUTE_NAMES)})
    return root


def make_checkpoint(folder: Path, crops_dir: Path, backbone: str = "resnet18", seed: int = 0,
                    data_version: str = DATA_VERSION, **extra) -> dict:
    """An untrained ``backbone`` whose batch norms are re-estimated on the crops (so faces get
    distinct embeddings instead of one collapsed direction), saved as a checkpoint."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.schema import load_crops
    from facerec.models import build_embedder, save_checkpoint
    from facerec.serve.defaults import recalibrate_batchnorm

    df, _ = load_crops(crops_dir)
    torch.manual_seed(seed)
    model = build_embedder(backbone, EMBED_DIM, freeze="none", pretrained=False)
    recalibrate_batchnorm(model, [read_image(crops_dir / p) for p in df["crop_path"]], IMAGE_SIZE)
    meta = {"image_size": IMAGE_SIZE, "data_version": data_version, "loss": "triplet", "epoch": 1, "split": SPLIT,
            "val_map_at_r": 0.5, "trial": f"{backbone}-test"}
    meta.update(extra)
    return save_checkpoint(folder, model.eval(), meta)


def reference_embeddings(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """The same model applied in this process, one image at a time (no Ray, no batching)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    tf = test_transform(int(meta["image_size"]))
    with torch.inference_mode():
        return np.concatenate([model(tf(read_image(p))[None]).numpy() for p in paths]).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_crops(tmp_path_factory) -> Path:
    return write_crops(tmp_path_factory.mktemp("tinycrops"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_crops, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "resnet18-best"
    make_checkpoint(folder, tiny_crops)
    return folder


@pytest.fixture(scope="module")
def ray_local():
    """A local 2-CPU Ray cluster for the module, shut down after it."""
    import ray

    if ray.is_initialized():  # left over by another module: start from a known cluster
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (importlib mode has no conftest imports)."""
    import types

    return types.SimpleNamespace(write_crops=write_crops, make_checkpoint=make_checkpoint,
                                 reference_embeddings=reference_embeddings, DATA_VERSION=DATA_VERSION, SPLIT=SPLIT,
                                 IMAGE_SIZE=IMAGE_SIZE, EMBED_DIM=EMBED_DIM)
