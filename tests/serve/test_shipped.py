"""What an Embedder replica reads travels with its deployment (facerec.serve.shipped): used in
place where the node has the same bytes, written into the node's cache where it has not, and a
clear error naming the node for what is not shipped (torch weights, the gallery). No Ray here:
``tests/cluster/test_multinode_serve.py`` runs the same on a two-node cluster."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError

MODEL_ID = "0123456789ab"


def _driver_files(cache: Path) -> tuple[Path, Path]:
    """A checkpoint folder (model.json, measured.json, no weights) and an export with its sidecar,
    as ensure_onnx lays them out: the landing logic reads only these, never the network."""
    ckpt = cache / "models" / "demo"
    ckpt.mkdir(parents=True)
    (ckpt / "model.json").write_text(json.dumps({"backbone": "dlib_resnet", "embedding_dim": 128, "freeze": "none",
                                                  "model_id": MODEL_ID, "input_kind": "aligned_chip_5pt"}))
    (ckpt / "measured.json").write_text(json.dumps({"lfw": {"accuracy_pct": 99.0}}))
    onnx = cache / "onnx" / f"{MODEL_ID}.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"exported network " * 1000)
    onnx.with_suffix(".json").write_text(json.dumps({
        "model_id": MODEL_ID, "opset": 17, "export_version": 2, "max_abs_diff_vs_torch": 1e-7, "inputs": [],
        "sha256": hashlib.sha256(onnx.read_bytes()).hexdigest()}))
    return ckpt, onnx


def test_on_the_driver_node_everything_is_used_in_place(tmp_path, monkeypatch):
    from facerec.serve.shipped import land_model, ship_model

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    ckpt, onnx = _driver_files(tmp_path / "cache")
    before = sorted(p for p in tmp_path.rglob("*"))
    landed = land_model(str(ckpt), str(onnx), ship_model(ckpt, onnx))
    assert (landed.checkpoint, landed.onnx_path, landed.weights, landed.written) == (str(ckpt), str(onnx), None, [])
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_node_without_the_driver_cache_gets_the_shipped_bytes(tmp_path, monkeypatch):
    from facerec.serve.shipped import land_model, ship_model

    driver, node = tmp_path / "driver-cache", tmp_path / "node-cache"
    ckpt, onnx = _driver_files(driver)
    shipped = ship_model(ckpt, onnx)
    assert set(shipped["checkpoint"]) == {"model.json", "measured.json"}
    # the replica's node: its own cache, and the driver's paths do not exist there
    want = {n: (ckpt / n).read_bytes() for n in ("model.json", "measured.json")}
    want_onnx = onnx.read_bytes()
    shutil.rmtree(driver)
    monkeypatch.setenv("FACEREC_CACHE", str(node))
    landed = land_model(str(ckpt), str(onnx), shipped)
    folder = Path(landed.checkpoint)
    assert folder.parent == node / "shipped" and folder.name.startswith(f"{MODEL_ID}-")
    assert {n: (folder / n).read_bytes() for n in want} == want
    assert landed.onnx_path == str(node / "onnx" / f"{MODEL_ID}.onnx")
    assert Path(landed.onnx_path).read_bytes() == want_onnx
    assert sorted(landed.written) == sorted(str(p) for p in [folder / "model.json", folder / "measured.json",
                                                             node / "onnx" / f"{MODEL_ID}.onnx",
                                                             node / "onnx" / f"{MODEL_ID}.json"])
    assert not driver.exists()  # nothing recreated at the driver's paths
    # a second replica on the node writes nothing
    assert land_model(str(ckpt), str(onnx), shipped).written == []
    # a damaged copy on the node is replaced, and only it
    Path(landed.onnx_path).write_bytes(b"truncated")
    again = land_model(str(ckpt), str(onnx), shipped)
    assert again.written == [landed.onnx_path] and Path(landed.onnx_path).read_bytes() == want_onnx


def test_a_recalibrated_checkpoint_is_not_served_from_a_stale_copy(tmp_path, monkeypatch):
    """The node holds the driver's path with an older measured.json (a calibration since redone
    on the driver): the replica must read what the driver checked, not the node's copy."""
    from facerec.serve.shipped import land_model, ship_model

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    ckpt, onnx = _driver_files(tmp_path / "cache")
    shipped = ship_model(ckpt, onnx)
    (ckpt / "measured.json").write_text(json.dumps({"lfw": {"accuracy_pct": 50.0}}))  # the node's stale copy
    landed = land_model(str(ckpt), str(onnx), shipped)
    assert landed.checkpoint != str(ckpt)
    assert json.loads((Path(landed.checkpoint) / "measured.json").read_text()) == {"lfw": {"accuracy_pct": 99.0}}
    assert landed.onnx_path == str(onnx)  # the export on the node is the shipped one: used in place


def test_torch_weights_are_not_shipped_and_their_absence_names_the_node(tmp_path, monkeypatch):
    from facerec.serve.shipped import land_model, ship_model

    ckpt, _ = _driver_files(tmp_path / "driver-cache")
    shipped = ship_model(ckpt, None)
    assert shipped["onnx"] is None
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "node-cache"))
    with pytest.raises(DataNotFoundError, match=r"model\.pt not found on (node|host) .*\. A replica on the torch runtime loads "
                                                r"the weights on the node it runs on, and they are not shipped: put "
                                                r"the checkpoint on storage every node mounts at the same path"):
        land_model(str(ckpt), None, shipped)


def test_install_files_refuses_paths_and_keeps_the_sidecar_last(tmp_path):
    from facerec.models.onnx_runtime import install_files

    with pytest.raises(ConfigError, match=r"^files=\['\.\./x', 'a\.json'\] is invalid: expected plain file names"):
        install_files(tmp_path, {"../x": b"1", "a.json": b"{}"}, last="a.json")
    with pytest.raises(ConfigError, match=r"including the sidecar 'b\.json'"):
        install_files(tmp_path, {"a.onnx": b"1"}, last="b.json")
    written = install_files(tmp_path, {"a.json": b"{}", "a.onnx": b"1"}, last="a.json")
    assert written == [tmp_path / "a.onnx", tmp_path / "a.json"]
    # a sidecar of other contents goes before the files it would wrongly vouch for are replaced
    assert install_files(tmp_path, {"a.json": b"{2}", "a.onnx": b"2"}, last="a.json") == written
    assert (tmp_path / "a.json").read_bytes() == b"{2}" and (tmp_path / "a.onnx").read_bytes() == b"2"


def test_a_shipped_export_that_does_not_hash_to_its_sidecar_is_refused(tmp_path, monkeypatch):
    from facerec.serve.shipped import land_model, ship_model

    ckpt, onnx = _driver_files(tmp_path / "driver-cache")
    shipped = ship_model(ckpt, onnx)
    shipped["onnx"][onnx.name] = b"damaged in transit"
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "node-cache"))
    with pytest.raises(ArtifactMismatchError, match=rf"{MODEL_ID}\.onnx has SHA-256 .* but .* records"):
        land_model(str(tmp_path / "elsewhere"), str(tmp_path / "elsewhere.onnx"), shipped)


def test_a_retriever_that_cannot_see_the_gallery_says_it_must_be_shared(tmp_path):
    from facerec.serve.retriever import RetrieverCore

    with pytest.raises(DataNotFoundError, match=r"gallery .*/absent: .*/absent/gallery\.json not found on (node|host) .*\. "
                                                r"Every Retriever replica reads and writes the gallery at this path on "
                                                r"its own node: put it on storage that every node mounts"):
        RetrieverCore(str(tmp_path / "absent"), {"m": "0123"})


def test_model_resources_place_replicas_and_are_checked(tmp_path):
    from facerec.serve.app import check_fits
    from facerec.serve.config import ModelConfig, ServeConfig

    m = ModelConfig(name="m", checkpoint="c", num_replicas=2, resources={"far": 0.5})
    assert m.deployment_options()["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"far": 0.5}}
    assert "resources" not in ModelConfig(name="m", checkpoint="c").deployment_options()["ray_actor_options"]
    for bad in ({"CPU": 1}, {"far": -1}, {"far": "1"}, ["far"]):
        with pytest.raises(ConfigError, match=r"^models\[m\]\.resources=.* is invalid: expected a mapping of custom Ray "
                                              r"resource names to amounts >= 0"):
            ModelConfig(name="m", checkpoint="c", resources=bad)
    cfg = ServeConfig(gallery_dir=str(tmp_path), models=[m])
    check_fits(cfg, {"CPU": 8, "far": 1.0})  # two replicas of 0.5 fit
    with pytest.raises(ConfigError, match=r"^resources\.far=1\.0 is invalid: expected at most the cluster's 0 'far'"):
        check_fits(cfg, {"CPU": 8})
