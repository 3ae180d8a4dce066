"""cluster/serve_config.yaml and cluster/rayservice.yaml: valid for Ray Serve's own config schema,
their args valid ServeConfigs, the two in agreement, and the import path an application builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _apps():
    from ray.serve.schema import ServeDeploySchema

    plain = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    v2 = yaml.safe_load(service["spec"]["serveConfigV2"])
    for cfg in (plain, v2):
        ServeDeploySchema.model_validate(cfg)  # Serve's schema of `serve deploy` files
    return plain["applications"][0], v2["applications"][0], service


def test_configs_valid_and_consistent():
    from facerec.serve.config import ServeConfig

    plain, v2, service = _apps()
    a, b = ServeConfig.from_dict(plain["args"]), ServeConfig.from_dict(v2["args"])
    assert a.to_dict() == b.to_dict()
    assert {m.name for m in a.models} == {"dlib_resnet", "dlib_resnet_tuned"}  # pretrained + fine-tuned face model
    assert a.model("dlib_resnet").checkpoint == "dlib_resnet" and not a.allow_untrained
    assert a.gallery_token is None and a.gallery_token_env == "FACEREC_GALLERY_TOKEN"  # no secret in the file
    for pod in [service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        assert "FACEREC_GALLERY_TOKEN" in env  # any node may host the Ingress replica
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/facerec" in mounts and a.gallery_dir.startswith("/mnt/facerec/")
    # the initial replicas (min_replicas of each autoscaled model) fit on the minimum GPU workers
    from facerec.serve.app import required_resources

    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert required_resources(a)["GPU"] <= int(limits["nvidia.com/gpu"]) * workers["minReplicas"]

def test_import_path_is_the_builder(serve_artifacts):
    import importlib

    from facerec.errors import DataNotFoundError

    plain, _, _ = _apps()
    module, _, attr = plain["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    # with the file's cluster paths (absent here) the builder stops before any replica, naming the gallery
    with pytest.raises(DataNotFoundError, match=r"/mnt/facerec/serve/gallery/gallery.json not found"):
        builder(plain["args"])
    # with this machine's paths it returns the bound application
    args = {**plain["args"], "gallery_dir": str(serve_artifacts["gallery"]), "default_model": "mnv3",
            "models": [{"name": n, "checkpoint": c} for n, c in serve_artifacts["checkpoints"].items()],
            "allow_untrained": True}
    from ray.serve import Application

    assert isinstance(builder(args), Application)
