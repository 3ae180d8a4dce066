"""One model reference (facerec.models.reference): a pretrained name, a folder, NAME=DIR, resolved
once; and the facts of dlib_resnet in one place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from facerec.errors import DataNotFoundError
from facerec.models.reference import ModelRef, model_input_kind, resolve_model


@pytest.fixture()
def reads(monkeypatch):
    """The folders whose model.json the one reader read, in order."""
    import facerec.models.metadata as metadata

    seen: list[str] = []
    real = metadata.read_checkpoint_metadata_bytes

    def counting(directory):
        seen.append(str(directory))
        return real(directory)

    monkeypatch.setattr(metadata, "read_checkpoint_metadata_bytes", counting)
    monkeypatch.setattr("facerec.models.reference.read_checkpoint_metadata_bytes", counting)
    return seen


def test_a_folder_resolves_once_and_passes_through(tiny_checkpoint, reads):
    ref = resolve_model(str(tiny_checkpoint))
    assert reads == [str(tiny_checkpoint)]
    assert isinstance(ref, ModelRef) and ref.pretrained is None
    assert ref.name == str(tiny_checkpoint) and str(ref) == os.fspath(ref) == str(tiny_checkpoint)
    assert ref.folder == Path(tiny_checkpoint) and Path(ref) / "model.pt" == tiny_checkpoint / "model.pt"
    assert ref.metadata == json.loads((tiny_checkpoint / "model.json").read_text())
    assert ref.metadata_bytes == (tiny_checkpoint / "model.json").read_bytes()
    assert (ref.model_id, ref.backbone, ref.input_kind.name, ref.image_size) == (
        ref.metadata["model_id"], "resnet18", "haar_crop", int(ref.metadata["image_size"]))
    assert resolve_model(ref) is ref and model_input_kind(ref) == "haar_crop"
    assert ref.calibration() is None and ref.detector is None  # uncalibrated: nothing measured beside it
    assert len(reads) == 1  # everything above asked the reference


def test_library_functions_take_the_reference_without_reading_again(tiny_checkpoint, reads):
    from facerec.gallery.embed import ModelSource, resolve_model_source
    from facerec.models import load_embedder

    ref = resolve_model(tiny_checkpoint)
    model, meta = load_embedder(ref)
    source = resolve_model_source(ref)
    assert meta == ref.metadata and model.metadata["backbone"] == "resnet18"
    assert source == ModelSource(str(Path(tiny_checkpoint).resolve()), None, ref.metadata, ref.image_size)
    assert source.input_kind == "haar_crop" and source.model_id == ref.model_id
    assert reads == [str(tiny_checkpoint)]
    # a folder given as before is resolved at the function's entry, once
    load_embedder(str(tiny_checkpoint))
    assert len(reads) == 2


def test_a_pretrained_name_resolves_to_its_cached_folder(reads):
    from facerec.models.pretrained import pretrained_checkpoint

    ref = resolve_model("dlib_resnet")
    assert ref.name == ref.pretrained == "dlib_resnet"
    assert ref.folder == pretrained_checkpoint("dlib_resnet")
    assert (ref.input_kind.name, ref.image_size, ref.metadata["embedding_dim"]) == ("aligned_chip_5pt", 150, 128)
    assert ref.calibration() is not None  # dlib_resnet ships one for these weights
    # ... measured on lfw-sample's faces as the default detector finds them
    assert {k: ref.detector[k] for k in ("detector", "min_confidence", "min_face")} == {
        "detector": "mtcnn", "min_confidence": 0.9, "min_face": 20}
    assert reads[0] == str(ref.folder)


def test_the_input_kind_of_a_pretrained_name_needs_nothing_built(monkeypatch):
    import facerec.models.pretrained as pretrained

    def refuse(name):
        raise AssertionError("built")

    monkeypatch.setattr(pretrained, "pretrained_checkpoint", refuse)
    monkeypatch.setattr(pretrained, "cached_folder", refuse)
    assert model_input_kind("dlib_resnet") == "aligned_chip_5pt"


def test_name_equals_dir_and_bare_names(tiny_checkpoint, reads):
    from facerec.models.pretrained import parse_checkpoints, parse_models

    models = parse_models([f"tuned={tiny_checkpoint}", "dlib_resnet"])
    assert list(models) == ["tuned", "dlib_resnet"]
    assert isinstance(models["tuned"], ModelRef) and models["tuned"].name == str(tiny_checkpoint)
    assert models["dlib_resnet"] == "dlib_resnet"  # a pretrained name: built where it is used, not here
    assert reads == [str(tiny_checkpoint)]
    bare = parse_models([str(tiny_checkpoint)])  # named after its backbone, still one read
    assert list(bare) == ["resnet18"] and len(reads) == 2
    assert parse_checkpoints([f"tuned={tiny_checkpoint}", "dlib_resnet"]) == {"tuned": str(tiny_checkpoint),
                                                                            "dlib_resnet": "dlib_resnet"}


def test_a_missing_folder_is_the_same_clear_error(tmp_path):
    from facerec.models.pretrained import parse_models

    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match=rf"checkpoint folder {missing} not found; pass a folder written by "
                                                rf"save_checkpoint, such as RUN/<trial_name>/best of a training run"):
        resolve_model(missing)
    with pytest.raises(DataNotFoundError, match=rf"--checkpoint {missing}: neither a checkpoint folder "
                                                rf"\(RUN/<trial>/best\) nor a pretrained model \(dlib_resnet\)"):
        parse_models([f"x={missing}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"model.json not found; .*empty is not a checkpoint folder"):
        resolve_model(tmp_path / "empty")


def test_the_facts_of_dlib_resnet_live_in_one_place():
    from facerec.data import inputs
    from facerec.dlibport import facts, files, resnet
    from facerec.models import BACKBONES
    from facerec.models.pretrained import PRETRAINED

    entry, spec = PRETRAINED.get(facts.NAME), BACKBONES.get(facts.NAME)
    assert (entry.input_kind, entry.image_size) == (spec.input_kind, spec.default_image_size) == (
        facts.INPUT_KIND, facts.CHIP_SIZE)
    assert spec.fixed_embedding_dim == resnet.EMBEDDING_DIM == facts.EMBEDDING_DIM
    assert inputs.ALIGNED_CHIP_5PT.name == facts.INPUT_KIND and inputs.CHIP_MEAN_RGB == facts.MEAN_RGB
    assert (inputs.CHIP_SIZE, inputs.CHIP_PADDING, resnet.INPUT_SIZE) == (facts.CHIP_SIZE, facts.CHIP_PADDING, facts.CHIP_SIZE)
    assert files.RESNET is facts.RESNET and files.SHAPE_5 is facts.SHAPE_5
    assert entry.card == facts.CARD
