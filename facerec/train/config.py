"""Validated configuration of one training run (:class:`TrainConfig`) and of a sweep over
losses x backbones (:class:`SweepConfig`).

Everything a worker would trip over is checked on the driver, before any Ray worker starts:
names against the registries (``BACKBONES``, ``LOSSES``, ``FREEZE_POLICIES``, :data:`SAMPLINGS`),
numbers against their ranges, the data folder on disk, and -- once the split is known -- whether
the P x K batch fits the training identities (:meth:`TrainConfig.check_data`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerec.errors import ConfigError, DataNotFoundError
from facerec.train.batches import BATCH_PLANS

# How training batches are drawn: "pk" (identity-balanced P x K batches, Hermans et al. 2017;
# the softmax family and online-mined triplet loss) or "fixed_triplets" (a fresh seeded draw of
# triplets per epoch, Schroff et al. 2015; triplet loss only). See facerec.train.batches.
SAMPLINGS = BATCH_PLANS

_check_data_dir: contextvars.ContextVar[bool] = contextvars.ContextVar("facerec_check_data_dir", default=True)


@contextlib.contextmanager
def data_prepared_later():
    """Validate configs whose crops folder does not exist yet (photos preprocessed once Ray is up):
    every check but the folder's; a command calls this to fail before it starts anything."""
    token = _check_data_dir.set(False)
    try:
        yield
    finally:
        _check_data_dir.reset(token)


SCORE_ATTRIBUTES = ("val_map_at_r", "val_precision_at_1")
CLASS_INITS = ("imprint", "random")
SPLIT_MODES = ("random", "official")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _check(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(name, value, expected)


@dataclass
class TrainConfig:
    """One training run: one loss x one backbone on one preprocessed crops folder.

    Fields are plain JSON-able values so the config travels to Ray workers as a dict
    (:meth:`to_dict` / :meth:`from_dict`) and is recorded in the run folder.
    """

    data_dir: str                      # preprocessed folder: crops.parquet + crops/
    loss: str = "triplet"              # LOSSES name
    backbone: str = "resnet18"         # BACKBONES name
    embedding_dim: int = 128
    freeze: str = "none"               # FREEZE_POLICIES name; "seed" = the study's policy (needs ImageNet weights)
    weights: str | None = None         # torchvision ImageNet state dict of the backbone; None: hub cache or random
    loss_params: dict = field(default_factory=dict)  # keyword parameters of the loss (margin, scale, mining...)
    sampling: str = "pk"               # SAMPLINGS name
    image_size: int = 112
    epochs: int = 2
    lr: float = 1e-3
    loss_lr: float | None = None       # learning rate of the loss's own weights (class centres); None: lr
    class_init: str = "imprint"        # class centres of the softmax-family losses: "imprint" (the classes'
    #                                    mean embeddings under the initial model) or "random"
    weight_decay: float = 0.0
    p: int = 8                         # identities per P x K batch
    k: int = 4                         # images per identity in a P x K batch
    triplet_batch: int = 32            # triplets per step with sampling="fixed_triplets"
    triplets_per_identity: int = 1     # triplets drawn per training identity per epoch (fixed_triplets)
    steps_per_epoch: int | None = None  # cap on optimizer steps per epoch (None: one pass over the data)
    split_mode: str = "random"         # facerec.data.splits.assign_splits mode
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    val_max_images: int | None = None  # cap on validation images (whole identities, seeded)
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool | None = None        # None: use GPUs when the cluster has them
    cpus_per_worker: int = 1           # also the worker's torch thread count on CPU
    worker_niceness: int | None = 0    # Unix nice of the training workers; None: Ray's default (15), see trainer
    max_failures: int = 2              # Ray Train FailureConfig: worker-group restarts from the last checkpoint
    patience: int | None = None        # early stopping: epochs without a better score
    num_to_keep: int = 2               # checkpoints kept by score (the latest one is kept too)
    score_attribute: str = "val_map_at_r"
    kill_at_epoch: int | None = None   # fault-injection hook for tests: rank 0 SIGKILLs itself during this
    #                                    epoch (1-based) of a run that did not start from a checkpoint

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Static checks (no data read beyond the folder's existence). ConfigError / DataNotFoundError."""
        from facerec.losses import LOSSES, build_loss
        from facerec.models import BACKBONES, FREEZE_POLICIES

        _check("data_dir", self.data_dir, isinstance(self.data_dir, (str, Path)) and str(self.data_dir) != "",
               "the path of a preprocessed folder (crops.parquet + crops/)")
        # Absolute in the driver: Ray Train workers run in their own working directory.
        self.data_dir = str(Path(self.data_dir).expanduser().absolute())
        table = Path(self.data_dir) / "crops.parquet"
        if _check_data_dir.get():  # off only while a command validates before it prepares the data
            if not Path(self.data_dir).is_dir():
                raise DataNotFoundError(
                    f"data_dir={self.data_dir!r} is not a folder: pass a preprocessed folder written by "
                    f"`facerec preprocess --data PHOTOS --out DIR` (crops.parquet + crops/)"
                )
            if not table.is_file():
                raise DataNotFoundError(
                    f"{table} not found: data_dir={self.data_dir!r} is not a preprocessed folder; "
                    f"run `facerec preprocess --data PHOTOS --out {self.data_dir}` first"
                )
        LOSSES.get(self.loss)
        BACKBONES.get(self.backbone)
        FREEZE_POLICIES.get(self.freeze)
        SAMPLINGS.get(self.sampling)
        if self.weights is not None and not Path(self.weights).is_file():
            raise DataNotFoundError(
                f"weights={self.weights!r} not found: pass a torchvision {self.backbone} ImageNet state dict, or omit it"
            )
        positive_ints = {
            "embedding_dim": "a positive integer such as 128",
            "epochs": "a positive number of epochs",
            "image_size": None,
            "p": None,
            "k": None,
            "triplet_batch": "a positive number of triplets per step, e.g. 32",
            "triplets_per_identity": "a positive number of triplets per identity per epoch",
            "num_workers": "a positive number of Ray Train workers",
            "cpus_per_worker": "a positive number of CPUs per worker",
            "num_to_keep": "a positive number of checkpoints to keep",
        }
        for name, expected in positive_ints.items():
            if expected is not None:
                v = getattr(self, name)
                _check(name, v, _is_int(v) and v >= 1, expected)
        _check("image_size", self.image_size, _is_int(self.image_size) and 32 <= self.image_size <= 512,
               "an integer number of pixels in [32, 512], e.g. 112 (CPU) or 218 (the study)")
        _check("p", self.p, _is_int(self.p) and self.p >= 2,
               "an integer >= 2 (identities per batch; losses need negatives from another identity)")
        _check("k", self.k, _is_int(self.k) and self.k >= 2,
               "an integer >= 2 (images per identity per batch; losses need a positive pair)")
        _check("lr", self.lr, _is_num(self.lr) and 0 < self.lr <= 1, "a learning rate in (0, 1], e.g. 1e-3")
        _check("loss_lr", self.loss_lr, self.loss_lr is None or (_is_num(self.loss_lr) and 0 < self.loss_lr <= 1),
               "None (same as lr) or a learning rate in (0, 1]: fine-tuning a pretrained model wants fresh class "
               "centres to learn faster than the backbone, e.g. lr=1e-4, loss_lr=1e-2")
        _check("class_init", self.class_init, self.class_init in CLASS_INITS,
               f"one of {list(CLASS_INITS)} (imprint: start each class centre at its mean embedding)")
        _check("weight_decay", self.weight_decay, _is_num(self.weight_decay) and self.weight_decay >= 0,
               "a number >= 0")
        for name in ("steps_per_epoch", "val_max_images", "patience", "kill_at_epoch"):
            v = getattr(self, name)
            _check(name, v, v is None or (_is_int(v) and v >= 1), "None or a positive integer")
        if self.kill_at_epoch is not None:
            # epoch 1 has no checkpoint to resume from: every attempt would die there.
            _check("kill_at_epoch", self.kill_at_epoch, self.kill_at_epoch >= 2, "None or an epoch >= 2")
        if self.val_max_images is not None:
            _check("val_max_images", self.val_max_images, self.val_max_images >= 4,
                   "None or at least 4 images (two identities with two images each)")
        _check("split_mode", self.split_mode, self.split_mode in SPLIT_MODES, f"one of {list(SPLIT_MODES)}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(name, v, _is_num(v) and 0 < v < 1, "a fraction in (0, 1)")
        _check("val_fraction+test_fraction", self.val_fraction + self.test_fraction,
               self.val_fraction + self.test_fraction < 0.9, "below 0.9, leaving identities to train on")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            _check(name, v, _is_int(v) and v >= 0, "a non-negative integer")
        _check("use_gpu", self.use_gpu, self.use_gpu in (None, True, False), "None (auto), True or False")
        _check("worker_niceness", self.worker_niceness,
               self.worker_niceness is None or (_is_int(self.worker_niceness) and 0 <= self.worker_niceness <= 19),
               "None (Ray's default) or an integer nice value in [0, 19]")
        _check("max_failures", self.max_failures, _is_int(self.max_failures) and self.max_failures >= -1,
               "an integer >= -1 (-1: retry forever, 0: no retry)")
        _check("score_attribute", self.score_attribute, self.score_attribute in SCORE_ATTRIBUTES,
               f"one of {list(SCORE_ATTRIBUTES)}")
        _check("loss_params", self.loss_params, isinstance(self.loss_params, dict), "a dict of loss keyword parameters")
        self._check_input_kind(table)
        if self.sampling == "fixed_triplets":
            _check("sampling", self.sampling, self.loss == "triplet",
                   f"'pk' for loss={self.loss!r} (fixed triplets feed only the triplet loss)")
        # Building the loss checks its parameters (names and ranges) with the loss's own messages;
        # the classifier is tiny at num_classes=2.
        build_loss(self.loss, self.embedding_dim, 2, **self.loss_params)

    def _check_input_kind(self, table: Path) -> None:
        """The backbone's input (kind, size, embedding dimension) against the crops folder's."""
        from facerec.data.inputs import check_inputs_match, input_kind
        from facerec.io import read_parquet_metadata
        from facerec.models import BACKBONES

        spec = BACKBONES.get(self.backbone)
        kind = input_kind(spec.input_kind)
        if kind.fixed_size:
            _check("image_size", self.image_size, self.image_size == kind.default_size,
                   f"{kind.default_size} for backbone {self.backbone} (its input is {kind.describe})")
        if spec.fixed_embedding_dim is not None:
            _check("embedding_dim", self.embedding_dim, self.embedding_dim == spec.fixed_embedding_dim,
                   f"{spec.fixed_embedding_dim} for backbone {self.backbone} (it ends in its own embedding layer)")
        if _check_data_dir.get():
            check_inputs_match({"input_kind": spec.input_kind, "image_size": self.image_size},
                               read_parquet_metadata(table), str(table), f"backbone {self.backbone}")

    def check_data(self, train_labels, num_val: int) -> None:
        """Checks against the split: P x K must fit the training identities each worker gets,
        and validation needs at least two identities with two images.

        ``train_labels``: identity of every training image.
        """
        labels = np.asarray(train_labels)
        ids, counts = np.unique(labels, return_counts=True)
        if len(ids) < 2:
            raise ConfigError("data_dir", self.data_dir, "a split with at least 2 training identities")
        if self.sampling == "pk":
            eligible = int((counts >= self.k).sum())
            per_worker = eligible // self.num_workers
            if self.k > int(counts.max()):
                raise ConfigError(
                    "k", self.k,
                    f"at most {int(counts.max())}, the most images any training identity has "
                    f"(median {int(np.median(counts))}); lower k or use a folder with more images per identity",
                )
            if self.p > per_worker:
                raise ConfigError(
                    "p", self.p,
                    f"at most {per_worker}: only {eligible} of {len(ids)} training identities have >= k={self.k} "
                    f"images, split over num_workers={self.num_workers}; lower p or k, or use more data",
                )
        if num_val < 4:
            raise ConfigError("val_fraction", self.val_fraction,
                              f"a larger fraction: the validation split has only {num_val} images (need >= 4)")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("TrainConfig", unknown, f"field names among {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """Short hash of everything that shapes the trained model; names the Ray Train run so a
        re-run with the same config resumes from its checkpoints and a changed one starts fresh."""
        skip = {"max_failures", "kill_at_epoch", "num_to_keep", "worker_niceness"}
        blob = json.dumps({k: v for k, v in self.to_dict().items() if k not in skip}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def trial_name(self) -> str:
        """Folder name of this run inside a RUN folder, e.g. ``arcface-resnet18``."""
        return f"{self.loss}-{self.backbone}"


@dataclass
class SweepConfig:
    """A grid over losses x backbones (optionally x learning rates x margins) around a
    :class:`TrainConfig` template. ``epochs_by_backbone`` overrides ``train.epochs`` per backbone
    (the study trained ResNet-50 for 10 epochs and MobileNet-V2 for 23)."""

    train: TrainConfig
    out_dir: str
    losses: list[str] = field(default_factory=lambda: ["triplet"])
    backbones: list[str] = field(default_factory=lambda: ["resnet18"])
    lrs: list[float] | None = None
    margins: list[float] | None = None  # applied to losses that take a ``margin`` parameter
    epochs_by_backbone: dict[str, int] = field(default_factory=dict)
    loss_params_by_loss: dict[str, dict] = field(default_factory=dict)
    sampling_by_loss: dict[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None   # None: derived from ray.cluster_resources()
    storage_path: str | None = None     # Ray Train/Tune storage; None: OUT/_ray (must be shared on a multi-node cluster)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from facerec.losses import LOSSES
        from facerec.models import BACKBONES

        _check("train", type(self.train).__name__, isinstance(self.train, TrainConfig), "a TrainConfig")
        _check("out_dir", self.out_dir, isinstance(self.out_dir, (str, Path)) and str(self.out_dir) != "",
               "a run folder path")
        self.out_dir = str(Path(self.out_dir).expanduser().absolute())
        for name, registry in (("losses", LOSSES), ("backbones", BACKBONES)):
            values = getattr(self, name)
            _check(name, values, isinstance(values, (list, tuple)) and len(values) >= 1 and len(set(values)) == len(values),
                   f"a non-empty list without repeats, from {registry.names()}")
            for v in values:
                registry.get(v)
        if self.lrs is not None:
            _check("lrs", self.lrs, isinstance(self.lrs, (list, tuple)) and len(self.lrs) >= 1
                   and all(_is_num(v) and 0 < v <= 1 for v in self.lrs), "None or a list of learning rates in (0, 1]")
        if self.margins is not None:
            _check("margins", self.margins, isinstance(self.margins, (list, tuple)) and len(self.margins) >= 1
                   and all(_is_num(v) and v >= 0 for v in self.margins), "None or a list of margins >= 0")
        for b, e in self.epochs_by_backbone.items():
            BACKBONES.get(b)
            _check(f"epochs_by_backbone[{b}]", e, _is_int(e) and e >= 1, "a positive number of epochs")
        for name in self.loss_params_by_loss:
            LOSSES.get(name)
        for name, s in self.sampling_by_loss.items():
            LOSSES.get(name)
            SAMPLINGS.get(s)
        _check("max_concurrent", self.max_concurrent,
               self.max_concurrent is None or (_is_int(self.max_concurrent) and self.max_concurrent >= 1),
               "None (from cluster resources) or a positive integer")
        # Every trial's config must be valid before Tune starts anything.
        self.trial_configs()

    def trial_configs(self) -> list[tuple[str, TrainConfig]]:
        """(trial name, TrainConfig) for every point of the grid, in a stable order. Losses
        without a ``margin`` parameter get one trial, not one per margin."""
        from facerec.losses import loss_params

        trials: list[tuple[str, TrainConfig]] = []
        for backbone in self.backbones:
            for loss in self.losses:
                has_margin = "margin" in loss_params(loss)
                margins = self.margins if (self.margins and has_margin) else [None]
                for lr in self.lrs or [None]:
                    for margin in margins:
                        params = {**self.train.loss_params, **self.loss_params_by_loss.get(loss, {})}
                        params = {k: v for k, v in params.items() if k in loss_params(loss)}
                        if margin is not None:
                            params["margin"] = int(margin) if loss == "sphereface" else float(margin)
                        sampling = self.sampling_by_loss.get(loss, "pk" if self.train.sampling == "fixed_triplets"
                                                             and loss != "triplet" else self.train.sampling)
                        cfg = self.train.replace(
                            loss=loss, backbone=backbone, loss_params=params, sampling=sampling,
                            lr=self.train.lr if lr is None else float(lr),
                            epochs=self.epochs_by_backbone.get(backbone, self.train.epochs),
                        )
                        name = cfg.trial_name()
                        if lr is not None and self.lrs and len(self.lrs) > 1:
                            name += f"-lr{lr:g}"
                        if margin is not None and self.margins and len(self.margins) > 1:
                            name += f"-m{margin:g}"
                        trials.append((name, cfg))
        return trials

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return json.loads(json.dumps(d))


def sweep_input_kind(backbones: list[str]) -> str:
    """The one input kind the sweep's backbones take (one crops folder feeds every trial)."""
    from facerec.models import BACKBONES

    kinds = {b: BACKBONES.get(b).input_kind for b in backbones}
    if len(set(kinds.values())) > 1:
        raise ConfigError("--backbones", ",".join(backbones),
                          f"backbones of one input kind per sweep (they take {kinds}); run one sweep per kind")
    return next(iter(kinds.values()))
