"""facerec.models.inference, the one crops -> embeddings loop: the same numbers as a direct forward
pass of the model, eval mode whatever mode the model is in, files = decoded arrays, the ONNX path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerec.data.images import encode_png
from facerec.models import build_embedder
from facerec.models.inference import embed_files, embed_images, forward, read_inputs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_embedder("mobilenet_v3_small", 16, "none", pretrained=False)
    m.metadata["image_size"] = 32
    # Move the batch-norm statistics off their initial values so eval and train mode differ.
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 32, 32))
    return m.eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (40 + 3 * i, 44, 3), dtype=np.uint8) for i in range(7)]


def direct(model, images, size=32) -> np.ndarray:
    """The forward pass written out by hand: the study's test transform, eval mode, no autograd."""
    from facerec.data.transforms import test_transform

    tf = test_transform(size)
    with torch.no_grad():
        return model.eval()(torch.stack([tf(im) for im in images])).numpy()


def test_unified_loop_equals_a_direct_forward_pass(model, images):
    want = direct(model, images)
    got = embed_images(model, images, batch_size=len(images))
    assert got.dtype == np.float32 and got.shape == (7, 16)
    np.testing.assert_array_equal(got, want)  # same batch: bit-identical
    # other batchings: within float32 tolerance, rows in input order
    np.testing.assert_allclose(embed_images(model, images, batch_size=3), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed_images(model, images, 32, batch_size=1), want, rtol=0, atol=1e-5)


def test_a_model_in_train_mode_is_embedded_in_eval_mode_and_left_training(model, images):
    want = direct(model, images)
    model.train()
    try:
        got = embed_images(model, images, batch_size=len(images))
        assert model.training
    finally:
        model.eval()
    np.testing.assert_array_equal(got, want)


def test_files_equal_their_decoded_arrays(model, images, tmp_path):
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"{i}.png"
        p.write_bytes(encode_png(im))
        paths.append(p)
    np.testing.assert_array_equal(embed_files(model, paths, batch_size=len(paths)),
                                  embed_images(model, images, batch_size=len(images)))
    x = read_inputs(paths, 32, "haar_crop")
    assert x.shape == (7, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(forward(model, x), direct(model, images))


def test_empty_input_gives_an_empty_matrix(model):
    assert embed_images(model, []).shape == (0, 16)
    assert embed_files(model, []).shape == (0, 16)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the legacy exporter
def test_onnx_model_runs_the_same_loop_without_torch_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    from facerec.data.inputs import ALIGNED_CHIP_5PT
    from facerec.models.onnx_runtime import OnnxModel

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 6)).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, (torch.zeros(2, 3, 150, 150),), str(path), input_names=["x"], output_names=["e"],
                      dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, opset_version=17, dynamo=False)
    chips = [np.random.default_rng(i).integers(0, 256, (150, 150, 3), dtype=np.uint8) for i in range(5)]
    got = embed_images(OnnxModel(path, threads=1), chips, 150, kind=ALIGNED_CHIP_5PT.name, batch_size=2)
    with torch.no_grad():
        want = net(torch.stack([ALIGNED_CHIP_5PT.tensor(c, 150) for c in chips])).numpy()
    assert got.shape == (5, 6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
