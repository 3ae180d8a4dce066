from __future__ import annotations

import os
from pathlib import Path

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


# Tests whose tiny forward/backward passes run in the test process (folders, or one module).
ONE_TORCH_THREAD = ("losses/", "models/", "eval/", "dlibport/test_resnet.py")


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
