"""Writing a synthetic dataset in the official CelebA folder layout, deterministically for a seed:

```
ROOT/
  img_celeba/000001.jpg ...     JPEG, image_size (default 178 x 218, the CelebA aligned size)
  identity_CelebA.txt           "000001.jpg 17"                       (LF, like the official file)
  list_attr_celeba.txt          count, the 40 names, "000001.jpg -1  1 ..." (CRLF, like the official file)
  list_eval_partition.txt       "000001.jpg 0"  0 train / 1 val / 2 test, identity-disjoint ~80/10/10
  SYNTHETIC.json                generator version and parameters; "complete": true once all is written
```

Each identity is screened once with the detector registry's ``haar`` (:func:`screening_detector`):
a neutral photo the cascade misses means the person is redrawn (about 1 in 40).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.data.synth.identity import Identity, passport_shot, sample_identity, sample_shot, shot_attributes
from facerec.data.synth.render import encode_jpeg, render
from facerec.errors import ConfigError
from facerec.io import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Bump whenever the drawing or the file format changes: a cached folder with another version
# is regenerated instead of being silently reused.
SYNTH_VERSION = "synthetic-v1.0"
MARKER_FILE = "SYNTHETIC.json"
IMAGE_DIR = "img_celeba"
IDENTITY_FILE = "identity_CelebA.txt"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"

_MIN_SIDE, _MAX_SIDE = 96, 2048


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one synthetic dataset; validated before any file is written."""

    n_identities: int = 60
    images_per_identity: int = 15
    seed: int = 0
    image_size: tuple[int, int] = (178, 218)  # (width, height), like PIL / CelebA docs

    def __post_init__(self) -> None:
        for name, low in (("n_identities", 2), ("images_per_identity", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(name, value, f"an integer >= {low} (retrieval needs several people with several photos each)")
        if self.n_identities * self.images_per_identity > 999_999:
            raise ConfigError(
                "n_identities*images_per_identity", self.n_identities * self.images_per_identity,
                "at most 999999 images (CelebA file names have six digits)",
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError("seed", self.seed, "a non-negative integer")
        size = self.image_size
        ok = (
            isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
            and all(_MIN_SIDE <= v <= _MAX_SIDE for v in size)
        )
        if not ok:
            raise ConfigError(
                "image_size", size, f"(width, height), two integers in [{_MIN_SIDE}, {_MAX_SIDE}], e.g. (178, 218)"
            )
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "n_identities", int(self.n_identities))
        object.__setattr__(self, "images_per_identity", int(self.images_per_identity))
        object.__setattr__(self, "seed", int(self.seed))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


_SCREEN_ATTEMPTS = 25


def screening_detector(cfg: SynthConfig):
    """The detector registry's ``haar`` at the preprocess stage's settings (scan step 1.1,
    5 neighbours, 24 px: ``DetectorConfig("haar")``), scanning photos of ``cfg.image_size`` whole."""
    from facerec.detect import DetectorConfig

    return DetectorConfig("haar", detect_max_side=max(640, *cfg.image_size)).build()


def count_faces(detector, rgb: np.ndarray) -> int:
    """Faces the first pass of a ``haar`` detector (:func:`screening_detector`) finds in ``rgb``."""
    return int(detector.detect_many([rgb])[0].info["faces_pass1"])


def draw_identity(cfg: SynthConfig, index: int, label: int, detector) -> tuple[Identity, int]:
    """Sample person ``index`` and redraw them (fresh random stream) while the cascade
    (``detector``: :func:`screening_detector`) misses their neutral passport photo: a handful of
    trait combinations read as no face to Haar, and a person the cropper can never find would
    only be dropped downstream. Returns the person and how many draws were rejected."""
    person = None
    for attempt in range(_SCREEN_ATTEMPTS):
        person = sample_identity(np.random.default_rng([cfg.seed, index, 0, attempt]), label)
        rng = np.random.default_rng([cfg.seed, index, 0, attempt, 1])
        if count_faces(detector, render(person, passport_shot(person), cfg.image_size, rng)) == 1:
            return person, attempt
    return person, _SCREEN_ATTEMPTS  # pragma: no cover - never seen; keep the last draw


def image_name(number: int) -> str:
    return f"{number:06d}.jpg"


def default_synthetic_dir() -> Path:
    """Where ``ensure_synthetic`` keeps its dataset: ``$FACEREC_CACHE`` (or ``~/.cache/facerec``)
    ``/synthetic-v1``."""
    from facerec.io import cache_root

    return cache_root() / "synthetic-v1"


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike, cfg: SynthConfig) -> bool:
    """True when ``root`` holds a finished dataset of this generator version and ``cfg``."""
    root = Path(root)
    marker = _read_marker(root)
    if not marker or not marker.get("complete") or marker.get("version") != SYNTH_VERSION:
        return False
    if marker.get("params") != cfg.as_dict():
        return False
    if not all((root / f).is_file() for f in (IDENTITY_FILE, ATTR_FILE, PARTITION_FILE)):
        return False
    n = cfg.n_identities * cfg.images_per_identity
    return all((root / IMAGE_DIR / image_name(i)).is_file() for i in range(1, n + 1))


def _split_sizes(n: int) -> tuple[int, int, int]:
    """Identities per official partition (train, val, test), ~80/10/10 with at least one test
    identity and, from three identities up, one validation identity."""
    n_test = max(1, int(round(0.1 * n)))
    n_val = max(1, int(round(0.1 * n))) if n - n_test >= 2 else 0
    return n - n_val - n_test, n_val, n_test


def _check_root(root: Path) -> None:
    """Refuse to write into a folder that holds something else (a real CelebA copy, say):
    only an empty folder or one a previous ``generate_synthetic`` marked is ours to fill."""
    if root.exists() and not root.is_dir():
        raise ConfigError("root", str(root), "a folder path (it is a file)")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER_FILE).is_file():
        raise ConfigError(
            "root", str(root),
            f"an empty folder or one written by `facerec data synth` (it has files but no {MARKER_FILE}); "
            "pick another folder so existing data is not overwritten",
        )


def _attr_text(rows: list[tuple[str, dict[str, int]]]) -> str:
    # Mirrors the official file byte for byte: CRLF, a trailing space after the names,
    # each value right-aligned in two columns.
    lines = [str(len(rows)), " ".join(ATTRIBUTE_NAMES) + " "]
    for name, attrs in rows:
        lines.append(name + "".join(f" {attrs[a]:2d}" for a in ATTRIBUTE_NAMES))
    return "\r\n".join(lines) + "\r\n"


def generate_synthetic(
    root: str | os.PathLike,
    n_identities: int = 60,
    images_per_identity: int = 15,
    seed: int = 0,
    image_size: tuple[int, int] = (178, 218),
    progress: bool = True,
) -> Path:
    """Write a synthetic CelebA-layout dataset to ``root`` and return ``root``.

    Deterministic for a ``seed`` (same OpenCV build). ``image_size`` is (width, height).
    Identities are assigned whole to the official partitions 0/1/2 (~80/10/10), images
    numbered train first, then val, then test, as in CelebA's ``list_eval_partition.txt``
    (Liu et al., ICCV 2015); identity numbers are spread over CelebA's 1..10177 range.
    Re-running with the same parameters on a complete folder returns at once; an interrupted
    run resumes, keeping the images already written (every file is written atomically).
    """
    cfg = SynthConfig(n_identities, images_per_identity, seed, image_size)
    root = Path(root).expanduser()
    if is_complete(root, cfg):
        logger.info("synth: %s is up to date (%s)", root, cfg.as_dict())
        return root
    _check_root(root)
    # Several processes may ask for the shared default folder at once (parallel tests, workers):
    # one generates, the others wait and then find it complete.
    with _folder_lock(root):
        if is_complete(root, cfg):
            return root
        return _generate(root, cfg, progress)


@contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):
        yield


def _generate(root: Path, cfg: SynthConfig, progress: bool) -> Path:
    from facerec.progress import Progress

    started = time.perf_counter()
    previous = _read_marker(root)
    resume = bool(previous and previous.get("version") == SYNTH_VERSION and previous.get("params") == cfg.as_dict())
    marker = {"version": SYNTH_VERSION, "params": cfg.as_dict(), "complete": False, "opencv": cv2.__version__}
    atomic_write_json(root / MARKER_FILE, marker)

    plan = np.random.default_rng([cfg.seed, 1 << 20])
    n = cfg.n_identities
    pool = max(10177, 2 * n)  # CelebA numbers its people 1..10177
    labels = np.sort(plan.choice(np.arange(1, pool + 1), size=n, replace=False))
    order = plan.permutation(n)
    n_train, n_val, n_test = _split_sizes(n)
    partition = np.empty(n, np.int8)
    partition[order[:n_train]] = 0
    partition[order[n_train:n_train + n_val]] = 1
    partition[order[n_train + n_val:]] = 2

    detector = screening_detector(cfg)
    people, rejected = [], 0
    for i in range(n):
        person, r = draw_identity(cfg, i, int(labels[i]), detector)
        people.append(person)
        rejected += r

    # Images of one partition are contiguous and shuffled within it, as in the official file.
    images: list[tuple[int, int]] = []
    for part in (0, 1, 2):
        block = [(i, j) for i in np.flatnonzero(partition == part) for j in range(cfg.images_per_identity)]
        images += [block[t] for t in plan.permutation(len(block))]

    img_dir = root / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    id_lines, part_lines, attr_rows = [], [], []
    bar = Progress(len(images), "synth", "img", enabled=progress)
    for number, (i, j) in enumerate(images, start=1):
        person = people[i]
        name = image_name(number)
        rng = np.random.default_rng([cfg.seed, i, 1 + j])
        shot = sample_shot(rng, person)
        path = img_dir / name
        if not (resume and path.is_file()):
            atomic_write_bytes(path, encode_jpeg(render(person, shot, cfg.image_size, rng), shot.jpeg_quality))
        id_lines.append(f"{name} {person.label}\n")
        part_lines.append(f"{name} {int(partition[i])}\n")
        attr_rows.append((name, shot_attributes(person, shot)))
        bar.update()
    bar.close()
    # A previous, larger dataset in this (marked) folder leaves images nobody lists: remove them.
    wanted = {image_name(k) for k in range(1, len(images) + 1)}
    for stale in img_dir.glob("*.jpg"):
        if stale.name not in wanted:
            stale.unlink()

    atomic_write_text(root / IDENTITY_FILE, "".join(id_lines))
    atomic_write_text(root / PARTITION_FILE, "".join(part_lines))
    atomic_write_text(root / ATTR_FILE, _attr_text(attr_rows))
    seconds = time.perf_counter() - started
    marker.update(
        complete=True,
        images=len(images),
        identities={"train": n_train, "val": n_val, "test": n_test},
        identities_redrawn_by_haar_screen=rejected,
        seconds=round(seconds, 2),
    )
    atomic_write_json(root / MARKER_FILE, marker)
    summary = (
        f"synth: {len(images)} images of {n} identities ({n_train}/{n_val}/{n_test} train/val/test), "
        f"{cfg.image_size[0]}x{cfg.image_size[1]}, seed {cfg.seed} -> {root} in {seconds:.1f}s"
    )
    logger.info(summary)
    if progress:
        print(summary, file=sys.stderr)
    return root


def ensure_synthetic(root: str | os.PathLike | None = None, **params) -> Path:
    """The synthetic dataset at ``root`` (default :func:`default_synthetic_dir`), generated
    with ``params`` (see :func:`generate_synthetic`) unless already there."""
    return generate_synthetic(default_synthetic_dir() if root is None else root, **params)
