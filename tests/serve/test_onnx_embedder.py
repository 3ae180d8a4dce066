"""FaceEmbedderCore on ONNX Runtime: no torch in the process, the same embeddings as torch, and
which runtime a model gets (``runtime`` of the core and of ModelConfig)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facerec.errors import ConfigError
from facerec.models.onnx_runtime import onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime is not installed (pip install onnxruntime)")


@pytest.fixture(scope="module")
def dlib_onnx(tmp_path_factory):
    """A private cache holding the dlib_resnet checkpoint and its export, and synthetic photos."""
    from facerec.data.synth import generate_synthetic
    from facerec.models.onnx_runtime import ensure_onnx
    from facerec.models.pretrained import resolve_checkpoint

    base = tmp_path_factory.mktemp("onnx_serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_CACHE", str(base / "cache"))
        checkpoint = resolve_checkpoint("dlib_resnet")
        onnx_path = ensure_onnx(checkpoint)
        photos = Path(generate_synthetic(base / "photos", n_identities=2, images_per_identity=2, seed=3))
        yield {"cache": base / "cache", "checkpoint": checkpoint, "onnx": str(onnx_path),
               "photos": sorted((photos / "img_celeba").glob("*.jpg"))}


_CHILD = textwrap.dedent("""
    import json, sys
    from facerec.serve.embedder import FaceEmbedderCore

    checkpoint, onnx_path, photo = sys.argv[1:4]
    core = FaceEmbedderCore(checkpoint, runtime="onnx", onnx_path=onnx_path, torch_threads=1)
    res = core.embed_many([(open(photo, "rb").read(), "largest", False)])[0]
    print(json.dumps({"ok": res["ok"], "embedding": [float(v) for v in res["faces"][0]["embedding"]] if res["ok"] else None,
                      "runtime": core.info()["runtime"], "torch": "torch" in sys.modules,
                      "torchvision": "torchvision" in sys.modules}))
""")


def test_onnx_core_embeds_without_torch_and_agrees_with_torch(dlib_onnx):
    from facerec.serve.embedder import FaceEmbedderCore

    torch_core = FaceEmbedderCore(dlib_onnx["checkpoint"], runtime="torch", torch_threads=1)
    assert torch_core.info()["runtime"] == "torch"
    photo = next(p for p in dlib_onnx["photos"] if torch_core.embed_many([(p.read_bytes(), "largest", False)])[0]["ok"])
    want = torch_core.embed_many([(photo.read_bytes(), "largest", False)])[0]["faces"][0]["embedding"]
    # A fresh interpreter: this test process has imported torch already.
    env = {**os.environ, "FACEREC_CACHE": str(dlib_onnx["cache"])}
    out = subprocess.run([sys.executable, "-c", _CHILD, dlib_onnx["checkpoint"], dlib_onnx["onnx"], str(photo)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["ok"] and child["runtime"] == "onnx"
    assert child["torch"] is False and child["torchvision"] is False
    np.testing.assert_allclose(np.asarray(child["embedding"], dtype=np.float32), want, rtol=0, atol=1e-5)


def test_auto_picks_onnx_only_with_an_export(dlib_onnx, monkeypatch):
    from facerec.serve.embedder import FaceEmbedderCore

    monkeypatch.setenv("FACEREC_CACHE", str(dlib_onnx["cache"]))
    core = FaceEmbedderCore("dlib_resnet", onnx_path=dlib_onnx["onnx"], torch_threads=1)
    assert core.runtime == "onnx" and core.info()["runtime"] == "onnx" and core.info()["device"] == "cpu"
    with pytest.raises(ConfigError, match=r"^runtime='onnx' is invalid: expected 'auto' or 'torch' for .*: no onnx_path was given"):
        FaceEmbedderCore("dlib_resnet", runtime="onnx")
    with pytest.raises(ConfigError, match=r"^runtime='tensorrt' is invalid: expected one of \['auto', 'torch', 'onnx'\]"):
        FaceEmbedderCore("dlib_resnet", runtime="tensorrt")


def test_an_export_of_another_model_is_refused(dlib_onnx, tmp_path, monkeypatch):
    import shutil

    from facerec.errors import ArtifactMismatchError
    from facerec.models.onnx_runtime import sidecar_path
    from facerec.serve.embedder import FaceEmbedderCore

    other = tmp_path / "other.onnx"
    shutil.copy(dlib_onnx["onnx"], other)
    side = json.loads(sidecar_path(dlib_onnx["onnx"]).read_text())
    sidecar_path(other).write_text(json.dumps({**side, "model_id": "0123456789ab"}))
    monkeypatch.setenv("FACEREC_CACHE", str(dlib_onnx["cache"]))
    with pytest.raises(ArtifactMismatchError, match=r"was exported from model_id 0123456789ab but the checkpoint"):
        FaceEmbedderCore("dlib_resnet", runtime="onnx", onnx_path=str(other))


def test_model_config_runtime_is_validated():
    from facerec.serve.config import ModelConfig

    assert ModelConfig(name="m", checkpoint="dlib_resnet").runtime == "auto"
    with pytest.raises(ConfigError, match=r"^models\[m\]\.runtime='tensorrt' is invalid: expected 'auto' \(ONNX Runtime "
                                          r"where the model allows it, else torch\), 'torch' or 'onnx'\.$"):
        ModelConfig(name="m", checkpoint="dlib_resnet", runtime="tensorrt")


@pytest.mark.parametrize("runtime, kind, num_gpus, expected", [
    ("auto", "aligned_chip_5pt", 0.0, "onnx"),
    ("onnx", "aligned_chip_5pt", 0.0, "onnx"),
    ("torch", "aligned_chip_5pt", 0.0, "torch"),
    ("auto", "aligned_chip_5pt", 1.0, "torch"),
    ("auto", "haar_crop", 0.0, "torch"),
    ("onnx", "aligned_chip_5pt", 1.0, r"models\[m\]\.runtime='onnx' is invalid: expected 'auto' or 'torch': .* because a GPU "
                                      r"was requested and the ONNX path runs on the CPU only; set num_gpus to 0"),
    ("onnx", "haar_crop", 0.0, r"models\[m\]\.runtime='onnx' is invalid: expected 'auto' or 'torch': .* because its input "
                               r"kind haar_crop needs torch"),
])
def test_app_resolves_the_runtime_of_each_model(runtime, kind, num_gpus, expected):
    from facerec.serve.app import resolve_runtime
    from facerec.serve.config import ModelConfig

    m = ModelConfig(name="m", checkpoint="/ckpt", runtime=runtime, num_gpus=num_gpus)
    meta = {"input_kind": kind, "model_id": "0123456789ab"}
    if expected in ("onnx", "torch"):
        assert resolve_runtime(m, meta) == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            resolve_runtime(m, meta)


def test_haar_crop_has_no_numpy_path():
    from facerec.data.inputs import ALIGNED_CHIP_5PT, HAAR_CROP

    assert ALIGNED_CHIP_5PT.supports_numpy and not HAAR_CROP.supports_numpy
    with pytest.raises(NotImplementedError, match=r"resize and ImageNet normalisation .* need torch"):
        HAAR_CROP.array(np.zeros((64, 64, 3), np.uint8), 64)
