"""A cold ``facerec serve`` reads each model's model.json once in the driver.

The real command (``facerec.cli.serve.main``: parsing, the gallery built in a fresh workdir,
``build_app`` binding the deployments, the startup lines) runs in this process with Ray's start,
Serve's start and ``run_app`` stubbed: ``run_app`` stops the command once the application is
bound. The replicas are other processes (each resolves its model once, :class:`FaceEmbedderCore`).
Every ``open`` of a file named model.json for reading is counted (an audit hook), whatever reads it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_reads: list[str] | None = None


def _audit(event, args):
    if _reads is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode = os.fsdecode(args[0]), args[1] if len(args) > 1 else "r"
    reading = isinstance(mode, str) and "r" in mode or isinstance(mode, int) and not mode & (os.O_WRONLY | os.O_RDWR)
    if os.path.basename(path) == "model.json" and (mode is None or reading):
        _reads.append(path)


sys.addaudithook(_audit)  # hooks stay for the process: it records only while a test counts


@pytest.fixture()
def cold_serve(monkeypatch, tmp_path):
    """Run ``facerec serve ARGS`` up to the bound application; returns the model.json reads."""
    import ray
    from ray import serve

    import facerec.ray_utils
    import facerec.serve.runtime

    def bound(app, *args, **kwargs):
        raise KeyboardInterrupt("the application is bound")  # main stops as on Ctrl-C

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: None)
    monkeypatch.setattr(serve, "start", lambda *a, **k: None)
    monkeypatch.setattr(facerec.ray_utils, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(facerec.serve.runtime, "apply_serve_env", lambda *a, **k: {})
    monkeypatch.setattr(facerec.serve.runtime, "serve_started", lambda r: False)
    monkeypatch.setattr(facerec.serve.runtime, "run_app", bound)

    def run(*argv: str) -> list[str]:
        global _reads
        from facerec.cli.serve import main

        _reads = []
        try:
            assert main(["--workdir", str(tmp_path / "work"), "--preprocess-engine", "local", *argv]) == 0
            return list(_reads)
        finally:
            _reads = None

    return run


def test_a_checkpoint_folder_is_read_once(serve_artifacts, cold_serve):
    folder = serve_artifacts["checkpoints"]["mnv3"]
    reads = cold_serve("--crops", str(serve_artifacts["crops"]), "--checkpoint", f"small={folder}", "--allow-untrained")
    assert reads == [str(Path(folder) / "model.json")]


def test_dlib_resnet_is_read_once(serve_artifacts, cold_serve, tmp_path):
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.models.pretrained import pretrained_checkpoint

    chips = tmp_path / "chips"
    preprocess(serve_artifacts["photos"], chips, PreprocessConfig(engine="local", input_kind="aligned_chip_5pt"),
               progress=False)
    folder = pretrained_checkpoint("dlib_resnet")  # built (or found) in the cache before counting
    reads = cold_serve("--crops", str(chips))  # no --checkpoint: the default model
    assert reads == [str(folder / "model.json")]


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_replica_start_reads_it_once(runtime):
    """An Embedder replica's start as EmbedderDeployment.__init__ does it (what the driver shipped
    landed on this node, then the core built): one read, the check that the node holds the
    shipped model.json; the weights are loaded through the reference made from those bytes."""
    global _reads
    from facerec.models.onnx_runtime import ensure_onnx
    from facerec.models.pretrained import pretrained_checkpoint
    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.serve.shipped import land_model, ship_model

    folder = str(Path(pretrained_checkpoint("dlib_resnet")).resolve())
    onnx = str(ensure_onnx(folder).resolve()) if runtime == "onnx" else None
    shipped = ship_model(folder, onnx, {})
    _reads = []
    try:
        where = land_model(folder, onnx, shipped)
        core = FaceEmbedderCore(where.model or where.checkpoint, runtime=runtime, onnx_path=where.onnx_path,
                                weights=where.weights, torch_threads=1)
        reads = list(_reads)
    finally:
        _reads = None
    assert core.runtime == runtime and core.model_id == where.model.model_id
    assert reads == [str(Path(folder) / "model.json")]
