"""A Serve app on a two-node local Ray cluster whose nodes have different caches: the Embedder
replica runs on the node whose cache is empty and where the driver's cache does not exist, and
finds faces with what the driver shipped to it (facerec.serve.shipped).

On one machine every node sees the same disk, so the driver's cache is moved away after
``build_app`` exported into it and before any replica starts: the paths the driver recorded then
exist on no node, as on a cluster whose nodes do not share the driver's home folder.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

FAR = "far_node"  # the custom resource only the worker node has


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver's cache (dlib_resnet's checkpoint, its ONNX export, MTCNN's) and a dlib gallery of
    synthetic photos, made in this process as `facerec serve` makes them."""
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.data.synth import generate_synthetic
    from facerec.gallery import GalleryBuildConfig, build_gallery
    from facerec.models.pretrained import resolve_checkpoint

    base = tmp_path_factory.mktemp("multinode")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_CACHE", str(base / "driver-cache"))
        photos = Path(generate_synthetic(base / "photos", n_identities=3, images_per_identity=2, seed=3, progress=False))
        crops = base / "chips"
        preprocess(photos, crops, PreprocessConfig(engine="local", input_kind="aligned_chip_5pt"), progress=False)
        checkpoint = resolve_checkpoint("dlib_resnet")
        gallery = base / "gallery"
        build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(gallery), checkpoints={"dlib_resnet": checkpoint},
                                         kinds=["kdtree"], engine="local"))
        yield {"base": base, "cache": base / "driver-cache", "photos": photos, "gallery": gallery,
               "checkpoint": Path(checkpoint)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_embedder_on_a_node_without_the_driver_cache(driver, tmp_path, monkeypatch, free_port):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from facerec.gallery import read_table
    from facerec.models.metadata import read_checkpoint_metadata
    from facerec.serve.app import ServeConfig, build_app, check_fits

    monkeypatch.setenv("FACEREC_CACHE", str(driver["cache"]))  # the head node's processes inherit it
    model_id = read_checkpoint_metadata(driver["checkpoint"])["model_id"]
    far_cache = tmp_path / "far-cache"
    moved = driver["base"] / "driver-cache-not-on-this-node"
    if ray.is_initialized():  # left over by another module: this test needs its own cluster
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={FAR: 1}, env_vars={"FACEREC_CACHE": str(far_cache)})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        config = ServeConfig(
            gallery_dir=str(driver["gallery"]),
            models=[{"name": "dlib_resnet", "checkpoint": "dlib_resnet", "num_cpus": 0.5, "resources": {FAR: 1},
                     "max_batch_size": 4, "torch_threads": 1, "prepare_threads": 1}],
            retriever_num_cpus=0.1, ingress_num_cpus=0.1)
        check_fits(config, ray.cluster_resources())
        app = build_app(config)  # the driver exports into its cache and records those paths
        driver_files = _files(driver["cache"] / "onnx")
        checkpoint_json = (driver["checkpoint"] / "model.json").read_bytes()
        driver["cache"].rename(moved)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": (port := free_port())})
        serve.run(app, name="facerec", route_prefix="/")

        table = read_table(driver["gallery"])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            info = client.get("/v1/models").json()["models"][0]
            assert info["runtime"] == "onnx" and info["model_id"] == model_id
            found_itself = 0
            for source_id, image_id in zip(table["source_id"], table["image_id"]):
                photo = (driver["photos"] / "img_celeba" / source_id).read_bytes()
                r = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"k": "2"})
                assert r.status_code == 200, r.text
                hits = r.json()["faces"][0]["results"]
                assert len(hits) == 2 and {h["image_id"] for h in hits} <= set(table["image_id"])
                # the gallery row of this photo was embedded by torch in the driver; the replica runs
                # the shipped ONNX export: the same photo is the same vector (up to ORT vs torch)
                found_itself += hits[0]["image_id"] == image_id and hits[0]["distance"] < 1e-3
            assert found_itself >= len(table) // 2
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        if moved.exists():
            moved.rename(driver["cache"])

    # What was written where: the far node's cache holds the driver's exports byte for byte, written
    # by the replica (no torch export: no checkpoint was built there), the checkpoint's metadata,
    # and the landmark model parsed from its package on that node.
    far = _files(far_cache)
    assert {k[len("onnx/"):]: v for k, v in far.items() if k.startswith("onnx/")} == driver_files
    assert sorted(driver_files) == sorted([f"{model_id}.onnx", f"{model_id}.json", "mtcnn/mtcnn.json",
                                           "mtcnn/onet.onnx", "mtcnn/pnet.onnx", "mtcnn/rnet.onnx"])
    shipped = [k for k in far if k.startswith("shipped/")]
    assert len(shipped) == 1 and shipped[0].startswith(f"shipped/{model_id}-") and shipped[0].endswith("/model.json")
    assert far[shipped[0]] == checkpoint_json
    assert [k for k in far if k.startswith("dlib/")] and not [k for k in far if k.startswith("models/")]
    assert {k.split("/")[0] for k in far} == {"onnx", "shipped", "dlib"}
    assert not (driver["cache"] / "shipped").exists()  # nothing written into the driver's cache


def test_torch_replica_rebuilds_a_pretrained_checkpoint_on_its_node(driver, tmp_path, monkeypatch):
    """dlib_resnet on the torch runtime (a GPU replica) where the driver's checkpoint folder is not
    there: its weights come from the package on the node, not from the driver; the metadata and the
    calibration from the driver."""
    import shutil

    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.serve.shipped import land_model, ship_model

    shipped = ship_model(driver["checkpoint"], None)
    node = tmp_path / "node-cache"
    # the node's parse of dlib's .dat, as its first use would leave it: only the parse is skipped
    shutil.copytree(driver["cache"] / "dlib", node / "dlib")
    monkeypatch.setenv("FACEREC_CACHE", str(node))
    landed = land_model(str(tmp_path / "not-on-this-node"), None, shipped)
    assert landed.onnx_path is None and Path(landed.weights).parent == node / "models"
    assert (Path(landed.weights) / "model.pt").read_bytes() == (driver["checkpoint"] / "model.pt").read_bytes()
    core = FaceEmbedderCore(landed.checkpoint, runtime="torch", weights=landed.weights, torch_threads=1)
    assert core.runtime == "torch" and core.model_id == shipped_model_id(shipped)
    photo = next((driver["photos"] / "img_celeba").glob("*.jpg")).read_bytes()
    emb = core.embed_many([(photo, "largest", False)])[0]
    assert emb["ok"] and 1.0 < float(np.linalg.norm(emb["faces"][0]["embedding"])) < 2.0  # dlib's raw descriptor


def shipped_model_id(shipped: dict) -> str:
    import json

    return json.loads(shipped["checkpoint"]["model.json"])["model_id"]
