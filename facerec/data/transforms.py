"""Image transforms: the study's training augmentation and the plain test transform.

Both take an ``H x W x 3`` uint8 RGB numpy array (what ``facerec.data.images.decode_image`` and
the crops folder give) or a PIL image and return a float32 ``3 x S x S`` tensor normalised with
the ImageNet mean/std the backbones were pretrained with.

Training (in this order):

1. resize to ``S x S`` (bilinear, antialiased; default S = 218, the crop size);
2. scale to [0, 1] and normalise with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`;
3. random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation"): with probability
   0.5 one rectangle of 2-33 % of the area, aspect ratio in [0.3, 3.3], set to 0;
4. region dropout (:class:`RegionDropout`): with probability 0.3 the image is cut into a
   4 x 4 grid and 4 of the 16 cells, chosen uniformly without replacement, are set to 0.

"Set to 0" happens after normalisation, i.e. the erased pixels become the ImageNet mean
colour, so they carry no signal into the first convolution. Randomness comes from torch's
global generator (seed it per worker with ``torch.manual_seed`` for reproducible epochs).

Test: steps 1 and 2 only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from facerec.data.images import to_uint8_chw
from facerec.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[object], torch.Tensor]


def _check_probability(field: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(field, p, "a probability in [0, 1]")


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ConfigError("size", size, "an integer >= 8 (side of the square network input, study: 218)")


def to_uint8_tensor(image) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB numpy array or PIL image -> ``3 x H x W`` uint8 tensor
    (:func:`facerec.data.images.to_uint8_chw`, shared with the torch-free serving path)."""
    return torch.from_numpy(to_uint8_chw(image))


class ToNormalizedTensor(nn.Module):
    """Array/PIL -> resized ``3 x S x S`` float32 tensor in ImageNet-normalised units."""

    def __init__(self, size: int = 218):
        super().__init__()
        _check_size(size)
        self.size = size
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, image) -> torch.Tensor:
        x = to_uint8_tensor(image)
        if tuple(x.shape[1:]) != (self.size, self.size):
            x = TF.resize(x, [self.size, self.size], interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        return self.normalize(x.float().div_(255.0))


class RegionDropout(nn.Module):
    """With probability ``p``, divide the ``C x H x W`` image into a ``grid x grid`` lattice
    (cell edges at ``round(i * H / grid)``, so cells cover the image exactly) and set
    ``cells`` of the ``grid**2`` cells, drawn uniformly without replacement, to ``value``
    (0 = the mean colour after normalisation). A structured cousin of Cutout (DeVries & Taylor
    2017) and GridMask (Chen et al. 2020) that hides several face parts at once."""

    def __init__(self, p: float = 0.3, grid: int = 4, cells: int = 4, value: float = 0.0):
        super().__init__()
        _check_probability("region_dropout_p", p)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ConfigError("region_dropout_grid", grid, "a positive integer (cells per side)")
        if isinstance(cells, bool) or not isinstance(cells, int) or not 1 <= cells <= grid * grid:
            raise ConfigError("region_dropout_cells", cells, f"an integer in [1, grid**2 = {grid * grid}]")
        self.p, self.grid, self.cells, self.value = float(p), grid, cells, float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        h, w = x.shape[-2:]
        rows = [round(i * h / self.grid) for i in range(self.grid + 1)]
        cols = [round(j * w / self.grid) for j in range(self.grid + 1)]
        x = x.clone()
        for cell in torch.randperm(self.grid * self.grid)[: self.cells].tolist():
            i, j = divmod(cell, self.grid)
            x[..., rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = self.value
        return x


def train_transform(
    size: int = 218,
    erasing_p: float = 0.5,
    erasing_scale: tuple[float, float] = (0.02, 0.33),
    erasing_ratio: tuple[float, float] = (0.3, 3.3),
    region_dropout_p: float = 0.3,
    region_dropout_grid: int = 4,
    region_dropout_cells: int = 4,
) -> Transform:
    """The study's augmentation (module docstring, steps 1-4)."""
    _check_probability("erasing_p", erasing_p)
    lo, hi = erasing_scale
    if not 0 < lo <= hi < 1:
        raise ConfigError("erasing_scale", erasing_scale, "(lo, hi) with 0 < lo <= hi < 1 (fraction of the area)")
    if not 0 < erasing_ratio[0] <= erasing_ratio[1]:
        raise ConfigError("erasing_ratio", erasing_ratio, "(lo, hi) with 0 < lo <= hi (aspect ratio range)")
    return T.Compose(
        [
            ToNormalizedTensor(size),
            T.RandomErasing(p=erasing_p, scale=tuple(erasing_scale), ratio=tuple(erasing_ratio), value=0),
            RegionDropout(region_dropout_p, region_dropout_grid, region_dropout_cells),
        ]
    )


def test_transform(size: int = 218) -> Transform:
    """Resize to ``size x size`` and ImageNet-normalise; deterministic (evaluation and serving)."""
    return ToNormalizedTensor(size)


test_transform.__test__ = False  # not a pytest test despite the name


def to_batch(images: Sequence, transform: Transform) -> torch.Tensor:
    """Apply ``transform`` to each image and stack: ``N x 3 x S x S`` float32."""
    if len(images) == 0:
        raise ConfigError("images", "[]", "at least one image to batch")
    return torch.stack([transform(image) for image in images])
