"""ServeConfig / ModelConfig validation and the artifact check done before any replica starts."""

from __future__ import annotations

import pytest

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.serve.config import ModelConfig, ServeConfig


def _cfg(**kw):
    base = dict(gallery_dir="/nonexistent/gallery", models=[{"name": "a", "checkpoint": "/ckpt/a"}])
    base.update(kw)
    return ServeConfig(**base)


def test_defaults_and_from_dict():
    cfg = ServeConfig.from_dict({"gallery_dir": "g", "models": [{"name": "resnet50", "checkpoint": "c1"},
                                                                {"name": "mobilenet_v2", "checkpoint": "c2"}]})
    assert cfg.default_model == "resnet50"
    assert isinstance(cfg.models[1], ModelConfig)
    assert cfg.models[1].max_batch_size == 16
    assert cfg.default_k == 9
    assert cfg.to_dict()["models"][1]["name"] == "mobilenet_v2"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"models": []}, r"models=\[\] is invalid"),
        ({"models": [{"name": "a", "checkpoint": "x"}, {"name": "a", "checkpoint": "y"}]}, r"models\[\]\.name='a'.*unique"),
        ({"default_model": "b"}, r"default_model='b'.*one of the served models \['a'\]"),
        ({"default_k": 0}, r"default_k=0 is invalid: expected an integer in \[1, 1000\]"),
        ({"default_k": 1001}, r"default_k=1001"),
        ({"max_upload_bytes": 10}, r"max_upload_bytes=10"),
        # the budget of upload bytes in flight must hold one search at the upload limit (10 MB as base64 + 64 KB)
        ({"max_inflight_upload_bytes": 10_000_000},
         r"max_inflight_upload_bytes=10000000 is invalid: expected an integer >= 14,046,549 \(one search request"),
        ({"max_inflight_upload_bytes": True}, r"max_inflight_upload_bytes=True"),
        ({"index_kind": "ball_tree"}, r"index_kind='ball_tree'.*kdtree"),
        ({"gallery_token": "short"}, r"gallery_token='<hidden>'.*at least 8"),
        ({"reload_poll_s": 0}, r"reload_poll_s=0.*> 0"),
        ({"detector": "hog"}, r"detector='hog' is invalid: expected one of \['haar', 'mtcnn'\]"),
        ({"min_confidence": 2}, r"min_confidence=2 is invalid: expected a detector score in \[0, 1\]"),
        ({"min_face": 0}, r"min_face=0 is invalid: expected an integer number of pixels"),
        ({"scale_step": 1.0}, r"scale_step=1.0 is invalid: expected a ratio in \(1, 2\]"),
    ],
)
def test_serve_config_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "bad name!"}, r"models\[\]\.name='bad name!'"),
        ({"max_batch_size": 0}, r"models\[a\]\.max_batch_size=0 is invalid: expected an integer in \[1, 1024\]"),
        ({"batch_wait_timeout_s": -1}, r"batch_wait_timeout_s=-1"),
        ({"num_replicas": "many"}, r"num_replicas='many'"),
        ({"min_replicas": 5, "max_replicas": 2}, r"min_replicas=5.*<= max_replicas \(2\)"),
        ({"max_batch_size": 32, "max_ongoing_requests": 8}, r"max_ongoing_requests=8.*>= max_batch_size \(32\)"),
        ({"num_gpus": -0.5}, r"num_gpus=-0.5"),
        ({"checkpoint": ""}, r"models\[a\]\.checkpoint=''"),
    ],
)
def test_model_config_rejects(kwargs, match):
    base = {"name": "a", "checkpoint": "/ckpt/a"}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**base)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"ServeConfig\.max_k=5.*unknown key"):
        ServeConfig.from_dict({"gallery_dir": "g", "models": [{"name": "a", "checkpoint": "c"}], "max_k": 5})
    with pytest.raises(ConfigError, match=r"models\[\]\.replicas=2.*unknown key"):
        ServeConfig.from_dict({"gallery_dir": "g", "models": [{"name": "a", "checkpoint": "c", "replicas": 2}]})


def test_deployment_options_fixed_and_autoscaling():
    fixed = ModelConfig("m", "c", num_replicas=3, num_cpus=2, num_gpus=1).deployment_options()
    assert fixed["name"] == "Embedder_m"
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    auto = ModelConfig("m", "c", num_replicas="auto", min_replicas=1, max_replicas=6, target_ongoing_requests=4).deployment_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 4.0}
    assert ModelConfig("m", "c", max_batch_size=1, batch_wait_timeout_s=0).batching() == {
        "max_batch_size": 1, "batch_wait_timeout_s": 0.0}


def test_check_artifacts(serve_artifacts, tmp_path):
    from facerec.serve.app import build_app, check_artifacts

    ck = serve_artifacts["checkpoints"]
    models = [{"name": n, "checkpoint": c} for n, c in ck.items()]
    ok = ServeConfig(str(serve_artifacts["gallery"]), models, allow_untrained=True)
    assert set(check_artifacts(ok)["models"]) == set(ck)
    # the suite's models were never trained on faces: refused unless allowed
    with pytest.raises(ConfigError, match=r"models\[mnv3\].checkpoint=.* is invalid: expected a model trained on faces: "
                                          r"this mobilenet_v3_small has random weights and was never fine-tuned"):
        check_artifacts(ServeConfig(str(serve_artifacts["gallery"]), models))

    # a model name the gallery has no index for
    wrong_name = ServeConfig(str(serve_artifacts["gallery"]), [{"name": "resnet50", "checkpoint": ck["r18"]}],
                             allow_untrained=True)
    with pytest.raises(ArtifactMismatchError, match=r"no index for model 'resnet50'"):
        build_app(wrong_name)
    # the right name but another checkpoint: queries would be compared with another model's vectors
    swapped = ServeConfig(str(serve_artifacts["gallery"]), [{"name": "mnv3", "checkpoint": ck["r18"]}],
                          allow_untrained=True)
    with pytest.raises(ArtifactMismatchError, match=r"model 'mnv3': checkpoint .* has model_id .* but the gallery index was built with"):
        check_artifacts(swapped)
    missing = ServeConfig(str(tmp_path / "nope"), [{"name": "mnv3", "checkpoint": ck["mnv3"]}])
    with pytest.raises(DataNotFoundError, match=r"gallery.json not found: .* is not a served gallery"):
        check_artifacts(missing)


def test_required_resources_and_fit():
    from facerec.serve.app import check_fits, required_resources

    cfg = _cfg(models=[{"name": "a", "checkpoint": "c", "num_cpus": 1.5, "num_replicas": 2},
                       {"name": "b", "checkpoint": "c", "num_cpus": 0.5, "num_gpus": 1, "num_replicas": "auto", "min_replicas": 1}],
               retriever_num_cpus=0.25, ingress_num_cpus=0.25, ingress_replicas=2)
    # 2 x 1.5 + 1 x 0.5 + 0.25 + 2 x 0.25, by hand
    assert required_resources(cfg) == {"CPU": 4.25, "GPU": 1.0}
    check_fits(cfg, {"CPU": 8, "GPU": 1})
    with pytest.raises(ConfigError, match=r"resources.CPU=4.25 is invalid: expected at most the cluster's 2 CPUs"):
        check_fits(cfg, {"CPU": 2, "GPU": 1})
    with pytest.raises(ConfigError, match=r"resources.GPU=1.0 .* 0 GPUs"):
        check_fits(cfg, {"CPU": 8})
