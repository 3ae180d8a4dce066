"""Per-worker image cache and the two batch plans (registry :data:`BATCH_PLANS`, keyed like
``TrainConfig.sampling``).

A worker decodes its crops once per attempt (PIL, as the rest of facerec decodes, in a thread
pool) and resizes them to the training size with the same antialiased bilinear resize that
``test_transform`` applies, so the cached ``uint8`` pixels are exactly what the transforms would
see; every epoch then only augments and normalises. That keeps images/s bound by the model, not
by JPEG decoding.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facerec.registry import Registry


def mix_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (seed, epoch, rank): stable across processes,
    unlike ``hash()``."""
    blob = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def _load_resized(path: str, size: int) -> np.ndarray:
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from facerec.data.images import read_image

    rgb = read_image(path)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)  # PIL arrays are read-only
    # Same op and arguments as facerec.data.transforms.ToNormalizedTensor on a uint8 tensor.
    x = TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return x.permute(1, 2, 0).contiguous().numpy()


class ImageCache:
    """Decoded, resized crops keyed by ``crop_path`` (relative to ``root``), in one
    ``N x S x S x 3`` uint8 array."""

    def __init__(self, root: str | Path, size: int, threads: int = 2):
        self.root = Path(root)
        self.size = int(size)
        self.threads = max(1, int(threads))
        self.index: dict[str, int] = {}
        self.images = np.empty((0, size, size, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def add(self, crop_paths: Iterable[str], progress: bool = False) -> None:
        """Decode the paths not yet cached (in parallel; PIL and torch release the GIL)."""
        todo = [p for p in dict.fromkeys(crop_paths) if p not in self.index]
        if not todo:
            return
        paths = [str(self.root / p) for p in todo]
        with ThreadPoolExecutor(self.threads) as pool:
            it = pool.map(lambda p: _load_resized(p, self.size), paths, chunksize=16)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(paths), desc="decode crops", mininterval=5)
            new = np.stack(list(it)) if paths else np.empty((0, self.size, self.size, 3), np.uint8)
        start = len(self.index)
        self.images = np.concatenate([self.images, new]) if start else new
        for i, p in enumerate(todo):
            self.index[p] = start + i

    def rows(self, crop_paths: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index[p] for p in crop_paths), dtype=np.int64, count=len(crop_paths))


class PKPlan:
    """Identity-balanced P x K batches (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet
    Loss for Person Re-Identification", Sec. 3: "randomly sampling P classes, and then randomly
    sampling K images of each class"), drawn by ``facerec.data.triplets.PKSampler`` with a seed
    mixed from (seed, epoch, rank), over this worker's identities."""

    triplets = False

    def __init__(self, cache: ImageCache, local: "object", train_df, cfg, rank: int, world: int):
        self.cache = cache
        self.crop_rows = cache.rows(list(local["crop_path"]))
        self.labels = local["label"].to_numpy(dtype=np.int64)
        self.cfg = cfg
        self.rank = rank

    def batches(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(cache rows, labels)] for one epoch (0-based): as many P x K batches as it takes to
        show about as many images as this worker holds (one PKSampler pass visits each identity
        once, i.e. only K images of it, so an epoch chains several seeded passes)."""
        from facerec.data.triplets import PKSampler

        batch = self.cfg.p * self.cfg.k
        want = max(1, -(-len(self.labels) // batch))
        out: list[tuple[np.ndarray, np.ndarray]] = []
        rounds = 0
        while len(out) < want:
            sampler = PKSampler(self.labels, self.cfg.p, self.cfg.k, seed=mix_seed(self.cfg.seed, self.rank, rounds))
            sampler.set_epoch(epoch)
            for idx in sampler:
                idx = np.asarray(idx, dtype=np.int64)
                out.append((self.crop_rows[idx], self.labels[idx]))
                if len(out) == want:
                    break
            rounds += 1
        return out


class FixedTripletPlan:
    """A fresh seeded draw of (anchor, positive, negative) triplets each epoch from
    ``facerec.data.triplets.triplet_dataset`` (Schroff, Kalenichenko, Philbin 2015, Sec. 3),
    dealt round-robin to the workers and grouped into steps of ``triplet_batch``. A batch is the
    anchors, then the positives, then the negatives (3B rows)."""

    triplets = True

    def __init__(self, cache: ImageCache, local, train_df, cfg, rank: int, world: int):
        self.cache = cache
        self.train_df = train_df
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.label_of = dict(zip(train_df["crop_path"], train_df["label"].astype(np.int64)))

    def batches(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from facerec.data.triplets import triplet_dataset

        table = triplet_dataset(self.train_df, epoch, self.cfg.seed,
                                per_identity=self.cfg.triplets_per_identity).to_pandas()
        table = table.iloc[self.rank :: self.world]
        cols = triplet_columns(table)
        self.cache.add([p for c in cols for p in table[c]])
        b = self.cfg.triplet_batch
        out = []
        for start in range(0, len(table) - b + 1, b):
            part = table.iloc[start : start + b]
            paths = [p for c in cols for p in part[c]]
            out.append((self.cache.rows(paths), np.array([self.label_of[p] for p in paths], dtype=np.int64)))
        return out


def triplet_columns(table) -> tuple[str, str, str]:
    """The anchor/positive/negative crop-path columns of a ``triplet_dataset`` table."""
    names = ("anchor", "positive", "negative")
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise KeyError(f"triplet table lacks the columns {missing}; it has {list(table.columns)}")
    return names


BATCH_PLANS: Registry[type] = Registry("sampling")
BATCH_PLANS.register("pk")(PKPlan)
BATCH_PLANS.register("fixed_triplets")(FixedTripletPlan)
