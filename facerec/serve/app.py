"""Build the Serve application from a :class:`ServeConfig`.

``build_app(config)`` checks every artifact first (checkpoints readable, gallery present, each
gallery index built by the served checkpoint) and only then binds the deployments:

    Ingress(config, {name: Embedder_<name>(model, crop) for each model}, Retriever(gallery))

``app_builder(args)`` is the import path for Serve config files
(``import_path: facerec.serve.app:app_builder`` with ``args:`` = ServeConfig fields), used by
``serve run``/``serve deploy`` and the KubeRay RayService in ``cluster/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.serve.config import ModelConfig, ServeConfig

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

__all__ = ["ModelConfig", "ServeConfig", "app_builder", "build_app", "check_artifacts", "check_fits", "required_resources",
           "resolve_models", "resolve_runtime"]


def resolve_models(config: ServeConfig, models: "dict[str, ModelRef] | None" = None) -> "dict[str, ModelRef]":
    """The :class:`facerec.models.reference.ModelRef` of each served model: ``models[name]`` when
    the caller resolved it already (``facerec serve`` did, in :func:`facerec.serve.local.prepare_gallery`),
    else its ``checkpoint`` resolved here, once. Each model's ``checkpoint`` becomes its folder."""
    return {m.name: _resolve(m, models) for m in config.models}


def _resolve(m: ModelConfig, models: "dict[str, ModelRef] | None") -> "ModelRef":
    from facerec.models.reference import resolve_model

    given = (models or {}).get(m.name)
    ref = resolve_model(given if given is not None and str(given) == str(m.checkpoint) else m.checkpoint)
    m.checkpoint = str(ref)
    return ref


def check_artifacts(config: ServeConfig, models: "dict[str, ModelRef] | None" = None) -> dict[str, Any]:
    """Read the gallery manifest and every checkpoint's model.json (no weights; ``models``: the
    references already resolved, :func:`resolve_models`); raise before any replica starts if a
    served model has no index in the gallery or another model built it. Returns the manifest."""
    return _checked(config, models)[0]


def _checked(config: ServeConfig, models: "dict[str, ModelRef] | None") -> "tuple[dict[str, Any], dict[str, ModelRef]]":
    """:func:`check_artifacts`: the manifest, and the references it resolved (each model in turn)."""
    from facerec.models.pretrained import is_untrained
    from facerec.gallery import read_manifest

    manifest = read_manifest(config.gallery_dir)
    refs = {}
    for m in config.models:
        refs[m.name] = _resolve(m, models)
        meta = refs[m.name].metadata
        if is_untrained(meta) and not config.allow_untrained:
            raise ConfigError(
                f"models[{m.name}].checkpoint", m.checkpoint,
                f"a model trained on faces: this {meta.get('backbone')} has {meta.get('init')} weights and was never "
                f"fine-tuned, so it answers with strangers. Serve dlib_resnet (the default), a fine-tuned checkpoint "
                f"(RUN/<trial>/best), or pass --allow-untrained (allow_untrained: true) to serve it anyway")
        entry = manifest["models"].get(m.name)
        if entry is None:
            raise ArtifactMismatchError(
                f"gallery {config.gallery_dir} has no index for model {m.name!r} (it has {sorted(manifest['models'])}); "
                f"rename the model in the config or rebuild the gallery with --checkpoint {m.name}={m.checkpoint}"
            )
        if entry["model_id"] != meta["model_id"]:
            raise ArtifactMismatchError(
                f"model {m.name!r}: checkpoint {m.checkpoint} has model_id {meta['model_id']} but the gallery index was "
                f"built with {entry['model_id']}; rebuild the gallery with this checkpoint"
            )
        resolve_runtime(m, refs[m.name])  # runtime: onnx where it cannot run fails here, before any replica
    from facerec.detect import check_same_detector, crops_detector

    made, now = crops_detector(manifest), config.detector_config().settings()
    for m in config.models:  # a calibration of faces another detector found fails here, not in a replica
        refs[m.name].calibration(now)
    check_same_detector(made, now, f"gallery {config.gallery_dir}",
                        f"serve it with the detector it was made with (facerec serve --gallery {config.gallery_dir} "
                        f"--detector {made['detector']} --min-confidence {made['min_confidence']} --min-face "
                        f"{made['min_face']} --scale-step {made['scale_step']}), or rebuild it with this one "
                        f"(facerec serve --data PHOTOS --rebuild)")
    return manifest, refs


def resolve_runtime(m: ModelConfig, meta: "ModelRef | dict[str, Any]") -> str:
    """``"onnx"`` or ``"torch"``: what will run model ``m`` (its reference, or its checkpoint
    metadata ``meta``) in its replicas. ``auto`` picks onnx when the input kind is made with numpy,
    onnxruntime is installed and the replicas get no GPU; an explicit ``onnx`` that cannot run is
    a ConfigError saying why."""
    from facerec.data.inputs import kind_of
    from facerec.models.onnx_runtime import why_not_onnx
    from facerec.models.reference import ModelRef

    if m.runtime == "torch":
        return "torch"
    reason = why_not_onnx(meta.input_kind if isinstance(meta, ModelRef) else kind_of(meta), gpu=m.num_gpus > 0)
    if reason is None:
        return "onnx"
    if m.runtime == "onnx":
        raise ConfigError(f"models[{m.name}].runtime", m.runtime, f"'auto' or 'torch': {m.checkpoint} cannot run on "
                                                                  f"ONNX Runtime because {reason}")
    return "torch"


def required_resources(config: ServeConfig) -> dict[str, float]:
    """CPUs, GPUs and custom resources the application reserves at its initial replica counts."""
    cpu = config.retriever_replicas * config.retriever_num_cpus + config.ingress_replicas * config.ingress_num_cpus
    gpu = 0.0
    custom: dict[str, float] = {}
    for m in config.models:
        n = m.min_replicas if m.num_replicas == "auto" else int(m.num_replicas)
        cpu += n * m.num_cpus
        gpu += n * m.num_gpus
        for key, amount in m.resources.items():
            custom[key] = custom.get(key, 0.0) + n * float(amount)
    return {"CPU": cpu, "GPU": gpu, **custom}


def check_fits(config: ServeConfig, available: dict[str, float]) -> None:
    """Refuse a config a fixed-size cluster cannot place: Serve would otherwise wait forever
    for replicas that never start."""
    need = required_resources(config)
    for key, amount in need.items():
        have = float(available.get(key, 0.0))
        if amount > have + 1e-9:
            raise ConfigError(
                f"resources.{key}", round(amount, 3),
                f"at most the cluster's {have:g} {key + 's' if key in ('CPU', 'GPU') else repr(key)}: lower "
                f"models[].num_cpus/num_gpus/resources, replicas, "
                f"ingress_num_cpus or retriever_num_cpus, or start nodes with the resource (ray start --resources)",
            )


# glibc raises its mmap threshold after the first large free (up to 32 MB), so the 10 MB upload
# buffers that follow are carved from the heap and kept by the process after use: behind the
# UploadGate the Ingress still grew with every round of 32 concurrent 10 MB uploads (RSS 307, 342,
# 454, 488, 494 MB after rounds 1-5). A fixed 1 MB threshold returns each large buffer to the
# system when it is freed (319, 336, 337, 337, 337 MB; same rounds).
INGRESS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}


def build_app(config: ServeConfig, models: "dict[str, ModelRef] | None" = None):
    """The bound application (``serve.run(build_app(cfg))``). ``models``: the served models'
    references when the caller resolved them (``facerec serve``); else each ``checkpoint`` is
    resolved here, once (:func:`resolve_models`)."""
    from facerec.serve.embedder import EmbedderDeployment
    from facerec.serve.ingress import Ingress
    from facerec.serve.retriever import Retriever

    manifest, refs = _checked(config, models)
    crop = {
        "crop_size": int(manifest.get("crop_size", 218)),
        "margin": float(manifest.get("margin", 0.2)),
        "max_pixels": config.max_pixels,
        "max_faces": config.max_faces,
        "detector": config.detector_config().settings(),
    }
    detector = config.detector_config().build()
    detector.prepare()  # an export happens here, once, not in every replica
    detector_files = detector.files()
    model_ids = {m.name: refs[m.name].model_id for m in config.models}
    embedders = {}
    for m in config.models:
        from facerec.serve.shipped import ship_model

        model = {**m.__dict__, "checkpoint": str(Path(m.checkpoint).resolve()), "onnx_path": None}
        if resolve_runtime(m, refs[m.name]) == "onnx":
            from facerec.models.onnx_runtime import ensure_onnx

            # Exported (and checked against torch) here, once, in the driver that has torch: the
            # replicas then only load it and never import torch.
            model["onnx_path"] = str(ensure_onnx(refs[m.name]).resolve())
        # These paths are in the driver's cache, which a replica on another node does not see:
        # the files travel with the deployment (facerec.serve.shipped).
        model["shipped"] = ship_model(refs[m.name], model["onnx_path"], detector_files)
        embedders[m.name] = EmbedderDeployment.options(user_config=m.batching(), **m.deployment_options()).bind(model, crop)
    open_set = {}
    for m in config.models:
        from facerec.gallery.openset import impostors_of

        cal = refs[m.name].calibration(crop["detector"])
        open_set[m.name] = {"target_fpir": config.target_fpir, "impostors": impostors_of(cal)}
    retriever = Retriever.options(
        num_replicas=config.retriever_replicas,
        max_ongoing_requests=config.retriever_max_ongoing_requests,
        ray_actor_options={"num_cpus": float(config.retriever_num_cpus)},
    ).bind(str(Path(config.gallery_dir).resolve()), model_ids, config.index_kind, config.index_params, config.reload_poll_s,
           open_set, erasure_list=config.erasure_list)
    return Ingress.options(
        num_replicas=config.ingress_replicas,
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": float(config.ingress_num_cpus), "runtime_env": {"env_vars": INGRESS_ENV}},
    ).bind(config.to_dict(), embedders, retriever)


def app_builder(args: dict[str, Any]):
    """Application builder for Serve config files: ``args`` are the ServeConfig fields."""
    return build_app(ServeConfig.from_dict(dict(args)))
