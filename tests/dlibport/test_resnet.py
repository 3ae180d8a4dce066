"""The PyTorch port of dlib's face recognition ResNet against dlib's own descriptors.

``data/dlib_reference.npz`` holds dlib's ``compute_face_descriptor`` on four deterministic
150x150 chips (noise, a smooth gradient, flat grey, and a synthetic face aligned by dlib's HOG
detector + 5-point landmarks + ``get_face_chip``), so these tests need no dlib. To regenerate
it (dlib-bin installed): ``python tests/dlibport/test_resnet.py --write-reference``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.dlibport import files
from facerec.dlibport.resnet import (
    LOWER_STAGES,
    MEAN_KEY,
    STAGES,
    TOP_MODULES,
    DlibResNet,
    add_zero_padded,
    build_dlib_resnet,
    load_dlib_resnet_state,
    read_resnet_dat,
)
from facerec.errors import ArtifactMismatchError

REFERENCE = Path(__file__).parent / "data" / "dlib_reference.npz"
TOL = 1e-5


def _model_path() -> Path:
    try:
        return files.locate(files.RESNET)
    except FileNotFoundError as e:
        pytest.skip(f"dlib's model file is not available: {e}")


@pytest.fixture(scope="module")
def model_path() -> Path:
    return _model_path()


@pytest.fixture(scope="module")
def model(model_path) -> DlibResNet:
    return build_dlib_resnet(model_path)


# --------------------------------------------------------------------------------------------
# Deterministic inputs (no RNG whose stream could change between numpy versions)


def noise_chip() -> np.ndarray:
    return np.frombuffer(hashlib.shake_128(b"facerec dlib noise chip").digest(150 * 150 * 3), np.uint8).reshape(150, 150, 3).copy()


def gradient_chip() -> np.ndarray:
    y, x = np.mgrid[0:150, 0:150].astype(np.float64)
    r = 255 * x / 149
    g = 255 * y / 149
    b = 127.5 + 127.5 * np.sin(x / 11.0) * np.cos(y / 17.0)
    return np.rint(np.stack([r, g, b], -1)).astype(np.uint8)


def grey_chip() -> np.ndarray:
    return np.full((150, 150, 3), 128, np.uint8)


def reference() -> dict[str, np.ndarray]:
    ref = np.load(REFERENCE)
    chips = np.stack([noise_chip(), gradient_chip(), grey_chip(), ref["face_chip"]])
    return {"names": ref["names"], "chips": chips, "descriptors": ref["descriptors"]}


def write_reference() -> None:  # pragma: no cover - run by hand with dlib-bin installed
    import dlib

    from facerec.data import synth

    person = synth.sample_identity(np.random.default_rng([7, 1]), 0)
    img = synth.render(person, synth.passport_shot(person), (300, 300), np.random.default_rng([7, 2]))
    faces = dlib.get_frontal_face_detector()(img, 1)
    assert len(faces) == 1, faces
    shape = dlib.shape_predictor(str(files.locate(files.SHAPE_5)))(img, faces[0])
    face = np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25))
    chips = [noise_chip(), gradient_chip(), grey_chip(), face]
    net = dlib.face_recognition_model_v1(str(files.locate(files.RESNET)))
    desc = np.array([np.array(net.compute_face_descriptor(c)) for c in chips])
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, names=np.array(["noise", "gradient", "grey", "face"]), descriptors=desc, face_chip=face,
                        dlib_version=np.array(dlib.__version__))
    print(f"wrote {REFERENCE} (dlib {dlib.__version__}); norms {np.linalg.norm(desc, axis=1)}")


# --------------------------------------------------------------------------------------------
# Parity with dlib


def test_matches_dlib_reference_descriptors(model):
    ref = reference()
    got = model.embed(ref["chips"])
    diff = np.abs(got - ref["descriptors"]).max(axis=1)
    assert diff.max() <= TOL, dict(zip(ref["names"], diff))
    # Not unit length: dlib's 0.6 threshold is on raw Euclidean distances.
    assert np.all(np.linalg.norm(got, axis=1) > 1.1)


def test_forward_takes_float_pixels_in_any_memory_format(model):
    chips = reference()["chips"][[0, 3]]
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        a = model(x.contiguous())
        b = model(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == (2, 128) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-6)
    assert np.abs(a.numpy() - reference()["descriptors"][[0, 3]]).max() <= TOL


def test_batch_equals_single(model):
    chips = reference()["chips"]
    batched = model.embed(chips, batch_size=4)
    single = np.concatenate([model.embed(c) for c in chips])
    assert np.abs(batched - single).max() <= 1e-6


def test_means_and_shapes(model):
    assert model.input_mean.tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)
    sizes = {}

    def record(name):
        def hook(module, inputs, output):
            sizes[name] = tuple(output.shape[1:])
        return hook

    hooks = [getattr(model, n).register_forward_hook(record(n)) for n in STAGES[:-1]]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, 150, 150))
    finally:
        for h in hooks:
            h.remove()
    assert sizes == {"stem": (32, 35, 35), "layer1": (32, 35, 35), "layer2": (64, 17, 17), "layer3": (128, 8, 8),
                     "layer4": (256, 4, 4), "layer5": (256, 2, 2)}


def test_stage_names_cover_every_parameter():
    m = DlibResNet()
    assert m.stages == STAGES and set(LOWER_STAGES) < set(STAGES)
    assert DlibResNet.TOP_MODULES == TOP_MODULES == ("layer4", "layer5", "fc")
    assert set(LOWER_STAGES) | set(TOP_MODULES) == set(STAGES)
    assert list(m.stage_modules()) == list(STAGES)
    tops = {name.split(".")[0] for name, _ in m.named_parameters()}
    assert tops == set(STAGES)


def test_rejects_wrong_input_shape(model):
    with pytest.raises(ValueError, match="RGB"):
        model(torch.zeros(1, 1, 150, 150))
    with pytest.raises(ValueError, match="150 x 150 x 3"):
        model.embed(np.zeros((1, 100, 100, 3), np.uint8))


# --------------------------------------------------------------------------------------------
# add_prev zero-padding


def test_add_prev_zero_pads_the_smaller_input():
    a = torch.arange(1.0, 5.0).reshape(1, 1, 2, 2)  # [[1, 2], [3, 4]]
    b = torch.full((1, 2, 3, 3), 10.0)
    out = add_zero_padded(a, b)
    expected = torch.tensor([[[[11.0, 12.0, 10.0], [13.0, 14.0, 10.0], [10.0, 10.0, 10.0]],
                              [[10.0] * 3] * 3]])
    assert torch.equal(out, expected)
    assert torch.equal(add_zero_padded(b, a), expected)
    # Mixed: a has more channels, b more rows and columns.
    c = torch.ones(1, 2, 1, 1)
    d = torch.full((1, 1, 2, 3), 5.0)
    assert torch.equal(add_zero_padded(c, d), torch.tensor([[[[6.0, 5, 5], [5, 5, 5]], [[1, 0, 0], [0, 0, 0]]]]))
    same = torch.ones(1, 1, 2, 2)
    assert torch.equal(add_zero_padded(same, same), 2 * same)


# --------------------------------------------------------------------------------------------
# The file: parsing, refusal, cache


def test_state_dict_layout(model_path):
    state = read_resnet_dat(model_path)
    assert set(state) == set(DlibResNet().state_dict())
    assert state["stem.conv.weight"].shape == (32, 3, 7, 7)
    assert state["fc.weight"].shape == (128, 256)
    assert state[MEAN_KEY].tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)
    assert sum(v.numel() for k, v in state.items() if k != MEAN_KEY) == 5_614_592


@pytest.mark.parametrize("cut", [11, 300, 100_000, 12_000_000, -1])
def test_truncated_file_names_the_file_and_layer(model_path, tmp_path, cut):
    bad = tmp_path / "truncated.dat"
    data = model_path.read_bytes()
    bad.write_bytes(data[:cut])
    with pytest.raises(ArtifactMismatchError, match=r"truncated\.dat: at byte \d+: file ends early.*\(reading .*ResNet\)"):
        read_resnet_dat(bad)


def test_file_of_another_network_is_refused(model_path, tmp_path):
    data = bytearray(model_path.read_bytes())
    i = data.index(b"\x05relu_")
    data[i + 1:i + 6] = b"tanh_"
    bad = tmp_path / "other.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match=r"other\.dat: at byte \d+: layer \d+ from the input \(relu\): expected 'relu_' or 'relu_2', got 'tanh_'"):
        read_resnet_dat(bad)
    extra = tmp_path / "longer.dat"
    extra.write_bytes(model_path.read_bytes() + b"\x01\x00")
    with pytest.raises(ArtifactMismatchError, match=r"longer\.dat: .*2 bytes left after the last layer"):
        read_resnet_dat(extra)


def test_foreign_dat_is_refused(tmp_path):
    try:
        other = files.locate(files.SHAPE_5)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with pytest.raises(ArtifactMismatchError, match=r"shape_predictor_5_face_landmarks\.dat: at byte \d+: .*loss layer"):
        read_resnet_dat(other)


def test_wrong_sha256_is_refused_before_parsing(model_path, tmp_path):
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    data = bytearray(model_path.read_bytes())
    data[-1] ^= 1  # a weight's last byte: still parses, but is not the released model
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match=rf"{bad.name}.*has SHA-256 [0-9a-f]{{64}}, expected {files.RESNET.sha256}"):
        load_dlib_resnet_state(bad)
    with pytest.raises(ArtifactMismatchError, match="SHA-256"):
        build_dlib_resnet(bad)


def test_cache_written_reused_and_rebuilt(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    cached = files.cache_dir() / f"{files.RESNET.sha256}.pt"
    assert cached.parent == tmp_path / "cache" / "dlib"
    first = load_dlib_resnet_state(model_path)
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    again = load_dlib_resnet_state(model_path)
    assert cached.stat().st_mtime_ns == stamp  # read, not rewritten
    assert all(torch.equal(first[k], again[k]) for k in first)
    cached.write_bytes(cached.read_bytes()[:1000])  # damaged
    rebuilt = load_dlib_resnet_state(model_path)
    assert all(torch.equal(first[k], rebuilt[k]) for k in first)
    assert torch.load(cached, weights_only=True)["sha256"] == files.RESNET.sha256
    assert not [p for p in cached.parent.iterdir() if p.suffix == ".tmp"]


def test_cache_folder_unwritable_is_not_fatal(model_path, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FACEREC_CACHE", str(blocker))
    state = load_dlib_resnet_state(model_path)
    assert state["fc.weight"].shape == (128, 256)


# --------------------------------------------------------------------------------------------
# Against live dlib, when installed


def test_matches_live_dlib_on_random_chips(model_path):
    try:
        import dlib
    except ImportError:
        pytest.skip("dlib-bin not installed")
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    chips = rng.integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    chips[1] = np.clip(chips[1].astype(int) // 4 + 100, 0, 255)  # low contrast
    net = dlib.face_recognition_model_v1(str(model_path))
    want = np.array([np.array(net.compute_face_descriptor(c)) for c in chips])
    got = build_dlib_resnet(model_path).embed(chips)
    assert np.abs(got - want).max() <= TOL, f"seed {seed}"


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write-reference"]:
        write_reference()
    else:
        sys.exit(f"usage: python {sys.argv[0]} --write-reference")
