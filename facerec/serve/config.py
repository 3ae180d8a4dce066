"""Validated configuration of the Serve application.

Everything the deployments need is in :class:`ServeConfig`; it is checked in ``__post_init__``
(types and ranges) and by :func:`facerec.serve.app.check_artifacts` (checkpoints and gallery on
disk) before any replica starts, so a typo fails on the driver with the field's name instead
of as a crash loop of replicas.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from facerec.errors import ConfigError

K_MAX = 1000
FACES_MODES = ("largest", "all")
RUNTIMES = ("auto", "torch", "onnx")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: Host names a server answers for when none are configured: its loopback names.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
# A DNS name or IPv4 address (optionally "*." + a domain: its sub-domains), an IPv6 address in
# brackets as in a Host header, or "*" (any: the check is off). No port, scheme or path.
_HOST = re.compile(rf"^(\*|(\*\.)?{_LABEL}(\.{_LABEL})*|\[[0-9a-f:.]+\])$")
_RAY_OWN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def allowed_hosts(bind: str, extra: list[str]) -> list[str]:
    """The Host names a server bound to ``bind`` answers for: its loopback names, the bind address
    (an IPv6 one in brackets, as a Host header writes it) and ``extra``."""
    return [*DEFAULT_ALLOWED_HOSTS, f"[{bind}]" if ":" in bind else bind, *extra]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(name, value, f"an integer {rng}")


def _check_num(name: str, value, low: float, high: float | None = None, low_open: bool = False) -> None:
    bad = not _is_num(value) or (value <= low if low_open else value < low) or (high is not None and value > high)
    if bad:
        lo = f"> {low}" if low_open else f">= {low}"
        rng = lo if high is None else f"{lo} and <= {high}"
        raise ConfigError(name, value, f"a number {rng}")


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(where, data, f"a mapping of {cls.__name__} fields")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], f"one of the fields {sorted(names)} (unknown key)")
    return cls(**data)


def check_allowed_hosts(hosts: Any) -> list[str]:
    """``hosts`` as a list of lower-case host names, or ConfigError naming the first bad one."""
    if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)) or not hosts:
        raise ConfigError("allowed_hosts", hosts, "a non-empty list of host names, e.g. ['localhost', '127.0.0.1', "
                                                  "'photos.example.com'] ('*' allows any)")
    out = []
    for h in hosts:
        name = h.strip().lower() if isinstance(h, str) else h
        if isinstance(name, str) and name.endswith(".") and not name.endswith("*."):
            name = name[:-1]  # "example.com." is the same name (a fully qualified one)
        if not isinstance(name, str) or len(name) > 253 or not _HOST.match(name):
            raise ConfigError("allowed_hosts[]", h, "a host name as in a Host header without the port: a DNS name or "
                                                    "IPv4 address, '[IPv6]', '*.example.com' (its sub-domains) or '*'")
        if name not in out:
            out.append(name)
    return out


@dataclass
class ModelConfig:
    """One served model = one ``Embedder`` deployment.

    ``checkpoint``: a folder written by ``facerec.models.save_checkpoint`` (model.pt + model.json),
    or the name of a pretrained model (``facerec.models.pretrained.PRETRAINED``, e.g. ``dlib_resnet``).
    ``max_batch_size`` / ``batch_wait_timeout_s``: ``@serve.batch`` dynamic batching (1 = off).
    The wait defaults to 0: the IdleGate already batches what arrives while the model computes,
    and a lone request should not wait for company that is not coming (bench_serve, one client,
    MobileNet-V2: 12.9 req/s batched with a 10 ms wait against 16.4 unbatched; 18.1 against 16.2
    with no wait).
    ``prepare_threads``: threads decoding the images of one batch and making their inputs in
    parallel (default: the reserved CPUs, at least 2).
    ``num_replicas``: an integer, or ``"auto"`` for Serve autoscaling between
    ``min_replicas`` and ``max_replicas`` aiming at ``target_ongoing_requests`` per replica.
    ``runtime``: what runs the network in a replica. ``"onnx"``: ONNX Runtime on the CPU, from a
    file the driver exports and checks against torch (``facerec.models.onnx_runtime``); the replica
    never imports torch (~1 GB of resident memory less for ``dlib_resnet``). Only for input kinds
    made with numpy (``aligned_chip_5pt``) and ``num_gpus`` 0. ``"torch"``: the checkpoint's
    Embedder. ``"auto"``: onnx where it can run, torch elsewhere.
    ``resources``: custom Ray resources each replica reserves, e.g. ``{"dlib_node": 1}`` to place
    the replicas on the nodes started with ``ray start --resources '{"dlib_node": 4}'``.
    """

    name: str
    checkpoint: str
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.0
    num_replicas: int | str = 1
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    torch_threads: int | None = None
    prepare_threads: int | None = None
    runtime: str = "auto"
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError("models[].name", self.name, "1-63 letters, digits, '_', '-' or '.', e.g. 'resnet50'")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"models[{self.name}].checkpoint", self.checkpoint, "the path of a checkpoint folder (model.pt + model.json)")
        p = f"models[{self.name}]"
        _check_int(f"{p}.max_batch_size", self.max_batch_size, 1, 1024)
        _check_num(f"{p}.batch_wait_timeout_s", self.batch_wait_timeout_s, 0.0, 10.0)
        if self.num_replicas != "auto":
            _check_int(f"{p}.num_replicas", self.num_replicas, 1, 1000)
        _check_int(f"{p}.min_replicas", self.min_replicas, 0, 1000)
        _check_int(f"{p}.max_replicas", self.max_replicas, 1, 1000)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(f"{p}.min_replicas", self.min_replicas, f"<= max_replicas ({self.max_replicas})")
        _check_num(f"{p}.target_ongoing_requests", self.target_ongoing_requests, 0.0, low_open=True)
        _check_num(f"{p}.num_cpus", self.num_cpus, 0.0)
        _check_num(f"{p}.num_gpus", self.num_gpus, 0.0)
        _check_int(f"{p}.max_ongoing_requests", self.max_ongoing_requests, 1, 100_000)
        if self.max_ongoing_requests < self.max_batch_size:
            # A replica never holds more than max_ongoing_requests, so a larger batch could never fill.
            raise ConfigError(f"{p}.max_ongoing_requests", self.max_ongoing_requests, f">= max_batch_size ({self.max_batch_size})")
        if self.torch_threads is not None:
            _check_int(f"{p}.torch_threads", self.torch_threads, 1, 256)
        if self.prepare_threads is None:
            # one decode thread per reserved CPU (at least 2: they mostly wait on C code)
            self.prepare_threads = max(2, int(self.num_cpus + 0.5))
        _check_int(f"{p}.prepare_threads", self.prepare_threads, 1, 256)
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"{p}.runtime", self.runtime,
                              "'auto' (ONNX Runtime where the model allows it, else torch), 'torch' or 'onnx'")
        if (not isinstance(self.resources, dict)
                or any(not isinstance(k, str) or not k or k in _RAY_OWN_RESOURCES or not _is_num(v) or v < 0
                       for k, v in self.resources.items())):
            raise ConfigError(f"{p}.resources", self.resources,
                              "a mapping of custom Ray resource names to amounts >= 0, e.g. {'dlib_node': 1} "
                              "(CPUs and GPUs are num_cpus and num_gpus)")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (replicas, autoscaling, resources)."""
        opts: dict[str, Any] = {
            "name": f"Embedder_{self.name}",
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)},
        }
        if self.resources:
            opts["ray_actor_options"]["resources"] = {k: float(v) for k, v in self.resources.items()}
        if self.num_replicas == "auto":
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": float(self.target_ongoing_requests),
            }
        else:
            opts["num_replicas"] = int(self.num_replicas)
        return opts

    def batching(self) -> dict[str, Any]:
        """The ``user_config`` of the Embedder: batching can change without restarting replicas."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": float(self.batch_wait_timeout_s)}


@dataclass
class ServeConfig:
    """The whole application.

    ``gallery_dir``: a served gallery folder (:mod:`facerec.gallery`) holding an index for
    every model in ``models``. ``index_kind``: None serves each index as saved; a name from
    ``facerec.index.INDEXES`` rebuilds that kind in memory from the stored embeddings.
    ``gallery_token``: bearer token for ``POST /v1/gallery``; when None the replica reads the
    environment variable ``gallery_token_env`` (a Kubernetes secret), and if that is unset
    gallery writes are disabled (403); the same token deletes and names identities.
    ``read_token``: when set (or ``read_token_env`` is set and not empty), searches, gallery images
    and identity listings need ``Authorization: Bearer <read token>`` (or the gallery token); unset:
    open to anyone who reaches the server.
    """

    gallery_dir: str
    models: list[ModelConfig]
    default_model: str | None = None
    index_kind: str | None = None
    index_params: dict[str, Any] = field(default_factory=dict)
    default_k: int = 9
    max_upload_bytes: int = 10 * 1024 * 1024
    # Request bodies one Ingress replica receives at once, in bytes (facerec.serve.middleware):
    # beyond it a request is refused with 503 + Retry-After before its body is read.
    max_inflight_upload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_faces: int = 10
    max_add_images: int = 16
    # The face detector and its gate (facerec.detect.DetectorConfig; None: the detector's default).
    # The gallery must have been made with the same settings (checked at start).
    detector: str = "mtcnn"
    min_confidence: float | None = None
    min_face: int | None = None
    scale_step: float | None = None
    min_neighbors: int = 5
    detect_max_side: int = 640
    gallery_token: str | None = None
    gallery_token_env: str = "FACEREC_GALLERY_TOKEN"
    read_token: str | None = None
    read_token_env: str = "FACEREC_READ_TOKEN"
    # Host header values answered (no port); others get 400 bad_host, so a page on another site
    # cannot reach the server through a DNS name it re-points at 127.0.0.1 (DNS rebinding).
    # "*.example.com": its sub-domains; "*": any host. `facerec serve` adds its --host.
    allowed_hosts: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS))
    # Search hits are "same person" at the threshold whose false positive identification rate
    # (share of searches by someone not in the gallery that show any match) is this, measured
    # for the gallery being served (facerec.gallery.openset).
    target_fpir: float = 0.01
    # A stat of gallery.json per poll: cheap, and a write by one replica reaches the others within it.
    reload_poll_s: float = 0.25
    retriever_replicas: int = 1
    retriever_num_cpus: float = 0.25
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.25
    # Serve's default of 5 in-flight requests per replica would cap what reaches the Embedders
    # at 5 per Ingress replica, so batches could never fill; these two only route and search.
    ingress_max_ongoing_requests: int = 512
    retriever_max_ongoing_requests: int = 512
    request_timeout_s: float = 60.0
    # A model whose weights never saw faces (random/ImageNet init, not fine-tuned) answers with
    # strangers; it is served only when this is set (tests, demos of the pipeline).
    allow_untrained: bool = False
    # The erasure list (facerec.data.erasure) a gallery delete records to, and whose crops cache it
    # scrubs: `facerec serve` sets $FACEREC_CACHE/erased.json. None: a delete reaches the gallery only.
    erasure_list: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gallery_dir, str) or not self.gallery_dir:
            raise ConfigError("gallery_dir", self.gallery_dir, "the path of a gallery folder (see pipelines/serve.py)")
        if not isinstance(self.models, (list, tuple)) or not self.models:
            raise ConfigError("models", self.models, "a non-empty list of {name, checkpoint, ...}")
        self.models = [m if isinstance(m, ModelConfig) else _from_dict(ModelConfig, m, "models[]") for m in self.models]
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError("models[].name", dupes[0], "unique model names (each is one deployment)")
        if self.default_model is None:
            self.default_model = names[0]
        elif self.default_model not in names:
            raise ConfigError("default_model", self.default_model, f"one of the served models {names}")
        if self.index_kind is not None:
            from facerec.index import INDEXES

            if self.index_kind not in INDEXES:
                raise ConfigError("index_kind", self.index_kind, f"None (as saved) or one of {INDEXES.names()}")
        if not isinstance(self.index_params, dict):
            raise ConfigError("index_params", self.index_params, "a mapping of index parameters")
        _check_int("default_k", self.default_k, 1, K_MAX)
        _check_int("max_upload_bytes", self.max_upload_bytes, 1024, 1 << 30)
        one_search = self.max_upload_bytes * 4 // 3 + 64 * 1024  # a photo as base64 JSON, with the form's overhead
        if not _is_int(self.max_inflight_upload_bytes) or self.max_inflight_upload_bytes < one_search:
            raise ConfigError("max_inflight_upload_bytes", self.max_inflight_upload_bytes,
                              f"an integer >= {one_search:,} (one search request at max_upload_bytes)")
        _check_int("max_pixels", self.max_pixels, 64 * 64, 1 << 31)
        _check_int("max_faces", self.max_faces, 1, 100)
        _check_int("max_add_images", self.max_add_images, 1, 1000)
        self.detector_config()  # ConfigError naming the detector field
        if self.gallery_token is not None and (not isinstance(self.gallery_token, str) or len(self.gallery_token) < 8):
            raise ConfigError("gallery_token", "<hidden>", "None or a secret string of at least 8 characters")
        if not isinstance(self.gallery_token_env, str) or not self.gallery_token_env:
            raise ConfigError("gallery_token_env", self.gallery_token_env, "an environment variable name")
        if self.read_token is not None and (not isinstance(self.read_token, str) or len(self.read_token) < 8):
            raise ConfigError("read_token", "<hidden>", "None or a secret string of at least 8 characters")
        if not isinstance(self.read_token_env, str) or not self.read_token_env:
            raise ConfigError("read_token_env", self.read_token_env, "an environment variable name")
        if self.read_token is not None and (not isinstance(self.read_token, str) or len(self.read_token) < 8):
            raise ConfigError("read_token", "<hidden>", "None or a secret string of at least 8 characters")
        if not isinstance(self.read_token_env, str) or not self.read_token_env:
            raise ConfigError("read_token_env", self.read_token_env, "an environment variable name")
        self.allowed_hosts = check_allowed_hosts(self.allowed_hosts)
        _check_num("reload_poll_s", self.reload_poll_s, 0.0, low_open=True)
        from facerec.gallery.openset import check_target

        check_target(self.target_fpir)
        _check_int("retriever_replicas", self.retriever_replicas, 1, 1000)
        _check_num("retriever_num_cpus", self.retriever_num_cpus, 0.0)
        _check_int("ingress_replicas", self.ingress_replicas, 1, 1000)
        _check_num("ingress_num_cpus", self.ingress_num_cpus, 0.0)
        _check_int("ingress_max_ongoing_requests", self.ingress_max_ongoing_requests, 1, 100_000)
        _check_int("retriever_max_ongoing_requests", self.retriever_max_ongoing_requests, 1, 100_000)
        _check_num("request_timeout_s", self.request_timeout_s, 0.0, low_open=True)
        if not isinstance(self.allow_untrained, bool):
            raise ConfigError("allow_untrained", self.allow_untrained, "true or false")
        if self.erasure_list is not None and (not isinstance(self.erasure_list, str) or not self.erasure_list):
            raise ConfigError("erasure_list", self.erasure_list, "None or the path of the erasure list (erased.json)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServeConfig":
        """From the ``args`` of a Serve config file (YAML) or JSON; unknown keys are errors."""
        return _from_dict(cls, data, "ServeConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def detector_config(self):
        """The :class:`facerec.detect.DetectorConfig` of the replicas."""
        from facerec.detect import DetectorConfig

        return DetectorConfig.of(self)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError("model", name, f"one of {[m.name for m in self.models]}")
