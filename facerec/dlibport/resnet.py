"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The network is ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``; in forward order:

- ``stem``: 150x150 RGB, ``(pixel - mean) / 256`` with the per-channel means stored in the file,
  then con 7x7/2 32 filters (no padding: dlib pads k//2 only at stride 1; 150 -> 72), affine,
  relu, max_pool 3x3/2 (no padding; 72 -> 35).
- ``layer1`` .. ``layer5``: residual blocks (dlib's ``alevel4`` .. ``alevel0``) of 32, 64, 128,
  256 and 256 filters; the first block of ``layer2`` .. ``layer5`` downsamples (``ares_down``).
  A block is con 3x3/s, affine, relu, con 3x3/1, affine, added to its input (or, downsampling,
  to avg_pool 2x2/2 of its input), then relu. The strided con has no padding, so its output
  can be smaller than the pooled shortcut (8 -> 3 vs 4; 4 -> 1 vs 2): dlib's ``add_prev`` then
  sums into a tensor of the larger shape, zero-padding the smaller input (extra channels,
  bottom rows, right columns). Spatial sizes: 35, 17, 8, 4, 2.
- avg_pool over everything, then ``fc`` 256 -> 128 without bias: the descriptor, not
  normalised (norms about 1.3-1.6); dlib's same-person threshold is 0.6 in Euclidean distance.

The trained file holds ``affine`` layers (batch norm folded into per-channel gamma, beta), kept
here as :class:`Affine` modules so they can be trained or frozen with their stage.

How the file is laid out (``dlib/dnn/core.h``): ``add_loss_layer`` writes its version and the
loss details, then its subnetwork. Every ``add_layer`` writes its version, then its subnetwork,
then its layer details and a trailer (three bools and the x_grad, cached_output and params_grad
tensors, empty in this file); ``add_tag_layer`` and ``add_skip_layer`` write only a version,
then their subnetwork (tag ids are not stored: the connections come from the definition below).
So the stream is: the loss, every layer's version from the top down, the bottom layer (input
layer, then the stem con), then every other layer's details from the bottom up.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerec.dlibport import facts, files
from facerec.dlibport.serialize import DlibReader
from facerec.errors import ArtifactMismatchError
from facerec.io import atomic_path

INPUT_SIZE = facts.CHIP_SIZE
EMBEDDING_DIM = facts.EMBEDDING_DIM
MEAN_KEY = "input_mean"

# (module name, filters, blocks, first block downsamples, dlib's name), in forward order.
_STAGE_SPEC = (
    ("layer1", 32, 3, False, "alevel4"),
    ("layer2", 64, 4, True, "alevel3"),
    ("layer3", 128, 3, True, "alevel2"),
    ("layer4", 256, 3, True, "alevel1"),
    ("layer5", 256, 1, True, "alevel0"),
)
STAGES = ("stem",) + tuple(s[0] for s in _STAGE_SPEC) + ("fc",)
"""Top-level module names of :class:`DlibResNet`, input to output."""
LOWER_STAGES = ("stem", "layer1", "layer2", "layer3")
"""The "lower blocks" (150x150 input down to 8x8 maps, up to 128 filters): 1.15 M of the 5.61 M
parameters. A partial fine-tune freezes these and trains ``layer4``, ``layer5`` (the 256-filter
stages, 4x4 and 2x2 maps; 4.43 M) and ``fc`` (0.03 M)."""
TOP_MODULES = tuple(s for s in STAGES if s not in LOWER_STAGES)
"""What a partial fine-tune trains: ``("layer4", "layer5", "fc")``."""
DLIB_NAMES = {s[0]: s[4] for s in _STAGE_SPEC}


# --------------------------------------------------------------------------------------------
# The model


class Affine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE: ``gamma[c] * x + beta[c]`` per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta.view(1, -1, 1, 1), x, self.gamma.view(1, -1, 1, 1))


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev`` (``tt::add``): the sum in a tensor of the larger size in every
    dimension, each input zero-padded (after its channels, below its rows, right of its
    columns) where it is smaller."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"add_prev of batches of {a.shape[0]} and {b.shape[0]} samples")

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, shape[3] - w, 0, shape[2] - h, 0, shape[1] - c))

    return pad(a) + pad(b)


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine = Affine(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (``downsample=False``) or ``ares_down``."""

    def __init__(self, in_channels: int, channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=0 if downsample else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        if self.downsample:
            return F.relu(add_zero_padded(F.avg_pool2d(x, 2, 2), y))
        return F.relu(y + x)


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet: ``forward`` maps N x 3 x 150 x 150 RGB pixel values in
    [0, 255] (float32, not normalised) to N x 128 descriptors as dlib computes them.

    Top-level modules, input to output: :data:`STAGES` (``stem``, ``layer1`` .. ``layer5``,
    ``fc``); :data:`LOWER_STAGES` are the ones a partial fine-tune freezes, :data:`TOP_MODULES`
    the ones it trains. The input means are
    the buffer ``input_mean`` (R, G, B), loaded from the file."""

    stages = STAGES
    lower_stages = LOWER_STAGES
    TOP_MODULES = TOP_MODULES

    def __init__(self):
        super().__init__()
        self.register_buffer(MEAN_KEY, torch.zeros(3))
        self.stem = Stem()
        cin = 32
        for name, channels, blocks, down, _ in _STAGE_SPEC:
            layers = []
            for i in range(blocks):
                layers.append(ResidualBlock(cin, channels, down and i == 0))
                cin = channels
            self.add_module(name, nn.Sequential(*layers))
        self.fc = nn.Linear(cin, EMBEDDING_DIM, bias=False)

    def stage_modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.stages}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x {INPUT_SIZE} x {INPUT_SIZE} RGB pixel values, got shape {tuple(x.shape)}")
        x = (x - self.input_mean.view(1, 3, 1, 1)) / 256.0
        x = self.stem(x)
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(x.mean(dim=(2, 3)))

    @torch.inference_mode()
    def embed(self, chips, batch_size: int = 32) -> np.ndarray:
        """Descriptors (N x 128 float32) of face chips: an N x 150 x 150 x 3 uint8 RGB array or
        a list of 150 x 150 x 3 arrays (``dlib.get_face_chip(img, shape, size=150,
        padding=0.25)``)."""
        if isinstance(chips, np.ndarray) and chips.ndim == 3:
            chips = chips[None]
        n = len(chips)
        out = np.empty((n, EMBEDDING_DIM), np.float32)
        for i in range(0, n, batch_size):
            batch = np.stack([np.asarray(c) for c in chips[i:i + batch_size]])
            if batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
                raise ValueError(f"face chips must be {INPUT_SIZE} x {INPUT_SIZE} x 3 RGB, got {batch.shape[1:]}")
            # N x H x W x 3 viewed as N x 3 x H x W is already channels_last.
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            out[i:i + len(batch)] = self(x).numpy()
        return out


# --------------------------------------------------------------------------------------------
# The file


@dataclass(frozen=True)
class _Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    name: str = ""  # state dict prefix of a layer with parameters
    shape: tuple = ()  # con: (filters, inputs, k, stride, padding); affine: (channels,);
    # pools: (nr, nc, stride, padding); fc: (outputs, inputs); tag/skip/add_prev: (tag id,)


def _layers() -> list[_Layer]:
    """The layers of ``anet_type`` in forward order (bottom of dlib's template nesting first)."""
    out = [_Layer("con", "stem.conv", (32, 3, 7, 2, 0)), _Layer("affine", "stem.affine", (32,)),
           _Layer("relu"), _Layer("max_pool", "", (3, 3, 2, 0))]
    cin = 32
    for stage, channels, blocks, down, _ in _STAGE_SPEC:
        for i in range(blocks):
            d = down and i == 0
            p = f"{stage}.{i}."
            out += [_Layer("tag", "", (1,)),
                    _Layer("con", p + "conv1", (channels, cin, 3, 2 if d else 1, 0 if d else 1)),
                    _Layer("affine", p + "affine1", (channels,)), _Layer("relu"),
                    _Layer("con", p + "conv2", (channels, channels, 3, 1, 1)),
                    _Layer("affine", p + "affine2", (channels,))]
            if d:
                out += [_Layer("tag", "", (2,)), _Layer("skip", "", (1,)), _Layer("avg_pool", "", (2, 2, 2, 0)),
                        _Layer("add_prev", "", (2,))]
            else:
                out += [_Layer("add_prev", "", (1,))]
            out += [_Layer("relu")]
            cin = channels
    out += [_Layer("avg_pool", "", (0, 0, 1, 0)), _Layer("fc", "fc", (EMBEDDING_DIM, cin))]
    return out


def _describe(index: int, layer: _Layer) -> str:
    what = f"{layer.kind} {layer.name}".strip()
    return f"layer {index} from the input ({what})"


def _version(r: DlibReader, what: str, allowed: tuple[int, ...]) -> int:
    start = r.pos
    v = r.int()
    if v not in allowed:
        r.pos = start
        raise r.error(f"{what}: expected version {' or '.join(map(str, allowed))}, got {v} (not this network?)")
    return v


def _expect(r: DlibReader, what: str, field: str, got, expected) -> None:
    if got != expected:
        raise r.error(f"{what}: expected {field} {expected}, got {got} (another network?)")


def _expect_ints(r: DlibReader, what: str, fields: tuple[str, ...], expected: tuple[int, ...]) -> None:
    for field, want in zip(fields, expected):
        start = r.pos
        got = r.int()
        if got != want:
            r.pos = start
            raise r.error(f"{what}: expected {field}={want}, got {got} (another network?)")


def _version_string(r: DlibReader, what: str, allowed: tuple[str, ...]) -> str:
    start = r.pos
    got = r.string()
    if got not in allowed:
        r.pos = start
        raise r.error(f"{what}: expected {' or '.join(map(repr, allowed))}, got {got!r} (another network?)")
    return got


def _params(r: DlibReader, what: str, size: int) -> np.ndarray:
    start = r.pos
    t = r.tensor()
    if t.size != size:
        r.pos = start
        raise r.error(f"{what}: expected {size} parameters, got a tensor of shape {t.shape}")
    return t.reshape(-1)


def _alias(r: DlibReader, what: str, field: str, expected: tuple[int, int, int, int]) -> None:
    start = r.pos
    got = r.alias_tensor()
    if got != expected:
        r.pos = start
        raise r.error(f"{what}: expected {field} of shape {expected}, got {got}")


def _false(r: DlibReader, what: str, field: str) -> None:
    if r.bool():
        r.pos -= 1
        raise r.error(f"{what}: {field} is set, which this port does not implement")


def _read_details(r: DlibReader, what: str, layer: _Layer, state: dict[str, np.ndarray]) -> None:
    k = layer.kind
    if k == "con":
        filters, inputs, size, stride, pad = layer.shape
        version = _version_string(r, what, ("con_4", "con_5", "con_6"))
        params = r.tensor()
        _expect_ints(r, what, ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"),
                     (filters, size, size, stride, stride, pad, pad))
        _alias(r, what, "filters", (filters, inputs, size, size))
        start = r.pos
        biases = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        use_bias = r.bool() if version in ("con_5", "con_6") else True
        if version == "con_6":
            _false(r, what, "use_relu")
        n_w = filters * inputs * size * size
        if not use_bias or biases != (1, filters, 1, 1):
            r.pos = start
            raise r.error(f"{what}: expected biases of shape (1, {filters}, 1, 1), got {biases} (use_bias={use_bias})")
        if params.size != n_w + filters:
            raise r.error(f"{what}: expected {n_w + filters} parameters, got a tensor of shape {params.shape}")
        params = params.reshape(-1)
        state[layer.name + ".weight"] = params[:n_w].reshape(filters, inputs, size, size)
        state[layer.name + ".bias"] = params[n_w:]
    elif k == "affine":
        (c,) = layer.shape
        version = _version_string(r, what, ("affine_", "affine_2"))
        params = _params(r, what, 2 * c)
        _alias(r, what, "gamma", (1, c, 1, 1))
        _alias(r, what, "beta", (1, c, 1, 1))
        _expect_ints(r, what, ("mode",), (0,))  # CONV_MODE
        if version == "affine_2":
            _false(r, what, "disabled")
        state[layer.name + ".gamma"] = params[:c]
        state[layer.name + ".beta"] = params[c:]
    elif k == "relu":
        if _version_string(r, what, ("relu_", "relu_2")) == "relu_2":
            _false(r, what, "disabled")
    elif k in ("max_pool", "avg_pool"):
        nr, nc, stride, pad = layer.shape
        _version_string(r, what, (f"{k}_2",))
        _expect_ints(r, what, ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"), (nr, nc, stride, stride, pad, pad))
    elif k == "add_prev":
        _version_string(r, what, ("add_prev_",))
    elif k == "fc":
        outputs, inputs = layer.shape
        version = _version_string(r, what, ("fc_2", "fc_3"))
        _expect_ints(r, what, ("num_outputs", "num_inputs"), (outputs, inputs))
        params = _params(r, what, outputs * inputs)
        _alias(r, what, "weights", (inputs, outputs, 1, 1))
        r.alias_tensor()  # biases: unused without bias
        _expect_ints(r, what, ("bias_mode",), (1,))  # FC_NO_BIAS
        for _ in range(4):
            r.float()
        if version == "fc_3":
            _false(r, what, "use_bias")
        # dlib stores inputs x outputs (y = x W); nn.Linear wants outputs x inputs.
        state[layer.name + ".weight"] = np.ascontiguousarray(params.reshape(inputs, outputs).T)
    else:  # pragma: no cover - the layer list holds no other kind
        raise AssertionError(k)


def _read_trailer(r: DlibReader, what: str, version: int, bottom: bool) -> None:
    """What ``add_layer`` writes after the details: setup/stale/disabled flags and scratch
    tensors (x_grad, cached_output, then params_grad or, at the bottom, grad_final)."""
    for _ in range(3):
        r.bool()
    r.tensor()
    r.tensor()
    if bottom or version >= 2:
        r.tensor()
    if bottom and version >= 3:
        r.int()  # _sample_expansion_factor


def _read_input(r: DlibReader, state: dict[str, np.ndarray]) -> None:
    what = "input layer"
    _version_string(r, what, ("input_rgb_image_sized",))
    means = np.array([r.float() for _ in range(3)], np.float64).astype(np.float32)
    _expect_ints(r, what, ("nr", "nc"), (INPUT_SIZE, INPUT_SIZE))
    state[MEAN_KEY] = means


def read_resnet_dat(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Parse dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into the state dict of
    :class:`DlibResNet` (input means included). Does not check the file's SHA-256 (see
    :func:`load_dlib_resnet_state`); any departure from the expected layer list (another
    network, a truncated or foreign file) raises ArtifactMismatchError naming the file, the
    byte offset, the layer and what was expected."""
    r = DlibReader.open(path)
    layers = _layers()
    state: dict[str, np.ndarray] = {}
    where = "the loss layer"
    try:
        _version(r, "loss layer (add_loss_layer)", (1,))
        if _version_string(r, "loss layer", ("loss_metric_", "loss_metric_2")) == "loss_metric_2":
            r.float()  # margin
            r.float()  # distance threshold
        # Versions from the top down, to the stem con (the add_layer that holds the input layer).
        versions: dict[int, int] = {}
        for i in range(len(layers) - 1, 0, -1):
            layer = layers[i]
            where = _describe(i, layer)
            if layer.kind in ("tag", "skip"):
                _version(r, f"{where}: add_{layer.kind}_layer", (1,))
            else:
                versions[i] = _version(r, f"{where}: add_layer", (1, 2))
        where = _describe(0, layers[0])
        bottom = _version(r, f"{where}: add_layer over the input layer", (2, 3))
        where = "the input layer"
        _read_input(r, state)
        where = _describe(0, layers[0])
        _read_details(r, where, layers[0], state)
        _read_trailer(r, where, bottom, bottom=True)
        # Details from the bottom up, as the recursion unwinds.
        for i in range(1, len(layers)):
            if i in versions:
                where = _describe(i, layers[i])
                _read_details(r, where, layers[i], state)
                _read_trailer(r, where, versions[i], bottom=False)
    except ArtifactMismatchError as e:
        if where in str(e):
            raise
        raise ArtifactMismatchError(f"{e} (reading {where} of dlib's face recognition ResNet)") from None
    if not r.at_end():
        raise r.error(f"{len(r.data) - r.pos} bytes left after the last layer (another network?)")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# Loading, with a parsed cache

_CACHE_FORMAT = 1


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in DlibResNet().state_dict().items()}


def _read_cache(path: Path, digest: str) -> dict[str, torch.Tensor] | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["state"]
        ok = (obj.get("format") == _CACHE_FORMAT and obj.get("sha256") == digest
              and {k: tuple(v.shape) for k, v in state.items()} == _expected_shapes()
              and all(v.dtype == torch.float32 for v in state.values()))
    except Exception:  # a damaged or foreign cache file is rebuilt, never fatal
        return None
    return state if ok else None


def load_dlib_resnet_state(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The state dict of :class:`DlibResNet` from dlib's model file (``path``, else the copy in
    the face-recognition-models package), verified by SHA-256. Parsed once, then cached as
    ``cache_dir()/<sha256>.pt``; a damaged cache file is rebuilt, an unwritable cache folder
    only costs a re-parse next time."""
    src = files.locate(files.RESNET, path)
    digest = files.file_sha256(src)
    cached = files.cache_dir() / f"{digest}.pt"
    if cached.is_file():
        state = _read_cache(cached, digest)
        if state is not None:
            return state
    state = read_resnet_dat(src)
    try:
        with atomic_path(cached) as tmp:
            torch.save({"format": _CACHE_FORMAT, "sha256": digest, "state": state}, tmp)
    except OSError:
        pass
    return state


def build_dlib_resnet(path: str | os.PathLike | None = None) -> DlibResNet:
    """:class:`DlibResNet` with dlib's trained weights, in eval mode, channels_last."""
    model = DlibResNet()
    model.load_state_dict(load_dlib_resnet_state(path))
    return model.eval().to(memory_format=torch.channels_last)


__all__ = [
    "DLIB_NAMES", "EMBEDDING_DIM", "INPUT_SIZE", "LOWER_STAGES", "STAGES", "TOP_MODULES", "Affine", "DlibResNet", "add_zero_padded", "build_dlib_resnet", "load_dlib_resnet_state", "read_resnet_dat",
]
