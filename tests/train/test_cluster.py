"""The cluster manifests are well-formed: the `ray up` config validates against Ray's own
cluster schema, and the RayJob runs the sweep pipeline with arguments it accepts."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_ray_up_config_validates_against_ray_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_groups = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_groups and all(t["max_workers"] >= 1 for t in gpu_groups)


def test_rayjob_manifest_runs_the_sweep_pipeline():
    job = yaml.safe_load((ROOT / "cluster" / "rayjob-train-sweep.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" in runtime_env and runtime_env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert any(p.startswith("torch==") for p in runtime_env["pip"]["packages"])
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "pipelines/train_sweep.py"]
    spec_ = importlib.util.spec_from_file_location("train_sweep", ROOT / "pipelines" / "train_sweep.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    args = mod.parse_args(argv[2:])          # argparse exits on an unknown flag
    assert args.preset == "seed" and args.out.startswith("/mnt/facerec/")
    # every pod mounts the shared volume the run folder is written to
    mounts = [m["mountPath"] for g in [spec["rayClusterSpec"]["headGroupSpec"], *workers]
              for m in g["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert mounts.count("/mnt/facerec") == 1 + len(workers)
