"""dlib_resnet exported to ONNX: parity with torch, the sidecar, reuse, damaged files, refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from facerec.errors import ArtifactMismatchError
from facerec.models import build_embedder, load_embedder, save_checkpoint
from facerec.models import onnx_runtime
from facerec.models.onnx_runtime import (MAX_ABS_DIFF, ONNX_OPSET, OnnxModel, ensure_onnx, onnx_available, read_sidecar,
                                         sidecar_path)
from facerec.models.pretrained import resolve_checkpoint

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime is not installed (pip install onnxruntime)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(dlib_resnet checkpoint folder, its .onnx) in a private cache: exported once per module."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_CACHE", str(cache))
        checkpoint = resolve_checkpoint("dlib_resnet")
        path = ensure_onnx(checkpoint)
        yield checkpoint, path


def test_export_matches_torch_and_records_the_figure(exported):
    checkpoint, path = exported
    model, meta = load_embedder(checkpoint)
    assert path.parent.name == "onnx" and path.name == f"{meta['model_id']}.onnx"
    side = json.loads(sidecar_path(path).read_text())
    assert side["model_id"] == meta["model_id"] and side["opset"] == ONNX_OPSET
    assert side["inputs"][0]["shape"] == ["n", 3, 150, 150] and side["outputs"][0]["shape"] == ["n", 128]
    assert 0.0 <= side["max_abs_diff_vs_torch"] <= 1e-5
    # inputs other than the export's own parity inputs, at a third batch size
    x = np.random.default_rng(7).integers(0, 256, (5, 3, 150, 150)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = OnnxModel(path, threads=1)(x)
    assert got.dtype == np.float32 and got.shape == (5, 128)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert ((np.linalg.norm(got, axis=1) > 1.0) & (np.linalg.norm(got, axis=1) < 2.0)).all()  # dlib's raw descriptors
    assert OnnxModel(path, threads=1)(np.zeros((0, 3, 150, 150), np.float32)).shape == (0, 128)


def test_second_call_reuses_the_file(exported):
    checkpoint, path = exported
    before = (path.stat().st_mtime_ns, sidecar_path(path).stat().st_mtime_ns)
    assert ensure_onnx(checkpoint) == path
    assert (path.stat().st_mtime_ns, sidecar_path(path).stat().st_mtime_ns) == before


def test_a_damaged_file_is_refused_by_readers_and_rebuilt_by_ensure_onnx(exported, tmp_path):
    checkpoint, path = exported
    cache = tmp_path / "onnx"
    shutil.copytree(path.parent, cache)
    damaged = cache / path.name
    damaged.write_bytes(damaged.read_bytes()[: 4096])  # a truncated copy (an interrupted sync, a full disk)
    with pytest.raises(ArtifactMismatchError, match=r"has SHA-256 .* but .*\.json records .*damaged or replaced"):
        read_sidecar(damaged)
    with pytest.raises(ArtifactMismatchError, match=r"could not be loaded by onnxruntime .* export again with ensure_onnx"):
        OnnxModel(damaged)
    rebuilt = ensure_onnx(checkpoint, cache_dir=cache)
    assert rebuilt == damaged and read_sidecar(rebuilt)["max_abs_diff_vs_torch"] <= 1e-5
    assert rebuilt.read_bytes() == path.read_bytes()  # the legacy exporter is deterministic


def test_an_export_that_disagrees_with_torch_is_refused(tmp_path, monkeypatch):
    """A small untrained model (fast to export); a bound below any real difference forces the refusal."""
    ckpt = tmp_path / "ckpt"
    model = build_embedder("mobilenet_v3_small", 16, freeze="none", pretrained=False)
    save_checkpoint(ckpt, model, {"image_size": 64, "data_version": "test", "loss": "none", "epoch": 0})
    monkeypatch.setattr(onnx_runtime, "MAX_ABS_DIFF", -1.0)
    with pytest.raises(ArtifactMismatchError, match=r"differs from torch by up to \S+ on seeded random inputs \(allowed: -1\); "
                                                    r"serve this checkpoint with runtime='torch'"):
        ensure_onnx(ckpt, cache_dir=tmp_path / "onnx")
    assert not list((tmp_path / "onnx").iterdir())  # nothing half-accepted left behind
    assert MAX_ABS_DIFF == 1e-4
