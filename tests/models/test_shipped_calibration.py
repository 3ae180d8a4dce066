"""dlib_resnet's calibration shipped as package data: a fresh cache (a fresh install) reads it, a
local ``facerec calibrate`` overrides it, it applies only to the weights, input kind and detector
it was measured with, and the model card shows the LFW accuracy it measured."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from facerec.detect import DetectorConfig
from facerec.errors import ArtifactMismatchError
from facerec.models.calibration import SHIPPED, read_calibration, summary, threshold_for
from facerec.models.metadata import read_checkpoint_metadata
from facerec.models.pretrained import MEASURED_FILE, model_card, record_measurement, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[2]
FILE = SHIPPED / "dlib_resnet.json"


@pytest.fixture()
def fresh(tmp_path, monkeypatch):
    """dlib_resnet's checkpoint built in an empty FACEREC_CACHE: nothing measured beside it."""
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    folder = resolve_checkpoint("dlib_resnet")
    assert folder.startswith(str(tmp_path / "cache")) and not (Path(folder) / MEASURED_FILE).exists()
    return folder


def _shipped() -> dict:
    return json.loads(FILE.read_text())["calibration"]


def test_the_shipped_file_records_where_it_came_from():
    cal = _shipped()
    data, prov = cal["data"], cal["provenance"]
    assert data["source"] == "lfw" and data["name"] == "lfw-sample" and re.fullmatch(r"lfw-pairs:[0-9a-f]{12}", data["data_version"])
    assert data["folds_identity_disjoint"] is True and data["pairs_file"] == "pairs.txt" and data["path"] == "lfw-sample"
    assert data["detector"] == DetectorConfig().settings()  # the default detector, as served by default
    assert prov["command"].startswith("facerec calibrate --model dlib_resnet --lfw ")
    assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]) and prov["facerec_version"]
    assert cal["shipped"]["by"] == "benchmarks/ship_calibration.py" and "files" not in cal
    assert cal["impostors"]["pairs"] == cal["pairs"]["impostor"] and cal["open_set"]["galleries"]


def test_the_shipped_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["facerec.models"]
    rel = FILE.relative_to(ROOT / "facerec" / "models").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)


def test_a_fresh_cache_reads_the_shipped_calibration(fresh):
    meta = read_checkpoint_metadata(fresh)
    shipped = _shipped()
    assert shipped["model_id"] == meta["model_id"]  # the weights a fresh install builds are the ones measured
    cal = read_calibration(fresh, meta, DetectorConfig().settings())
    assert cal is not None and cal["origin"] == "shipped"
    assert {k: v for k, v in cal.items() if k != "origin"} == shipped
    point = next(p for p in shipped["operating_points"] if p["far"] == shipped["default_far"])
    assert threshold_for(cal) == (shipped["default_far"], point["threshold"])
    s = summary(cal)
    assert s["origin"] == "shipped" and s["provenance"]["command"] == shipped["provenance"]["command"]
    # The card: the LFW accuracy the calibration measured, saying where it comes from.
    card = model_card(meta, fresh, cal)
    assert card["lfw_accuracy_pct"] == round(100 * shipped["accuracy"]["mean"], 2)
    assert card["lfw_measured_on"] == "lfw-sample, 3 folds of pairs.txt (calibration, shipped)"
    from facerec.serve.verification import startup_line

    line = startup_line("dlib_resnet", fresh, DetectorConfig().settings())
    assert line.startswith(
        f"serve: dlib_resnet says same person iff distance <= {point['threshold']:.4f} (FAR {shipped['default_far']:g};")
    assert ", shipped with facerec) in /v1/verify" in line and line.endswith(
        "search uses the gallery's open-set threshold (GET /v1/models: open_set)")


def test_a_local_calibration_overrides_the_shipped_one(fresh):
    meta = read_checkpoint_metadata(fresh)
    local = dict(_shipped(), operating_points=[{"far": 0.001, "resolvable": True, "threshold": 0.5}], shipped=None,
                 accuracy={"mean": 0.97})
    record_measurement(fresh, "calibration", local)
    cal = read_calibration(fresh, meta)
    assert cal["origin"] == "local" and threshold_for(cal) == (0.001, 0.5)
    assert summary(cal)["origin"] == "local"
    assert model_card(meta, fresh, cal)["lfw_accuracy_pct"] == 97.0
    # facerec evaluate --lfw's own record comes first
    record_measurement(fresh, "lfw", {"accuracy_pct": 98.1, "data": "lfw-sample, 3 folds of pairs.txt"})
    assert model_card(meta, fresh, cal)["lfw_accuracy_pct"] == 98.1
    # a local calibration of another detector is refused, as before; the shipped one is not consulted
    with pytest.raises(ArtifactMismatchError, match=r"the calibration in .* was made with the face detector mtcnn"):
        read_calibration(fresh, meta, DetectorConfig("haar").settings())


def test_the_shipped_calibration_is_only_for_its_weights_kind_and_detector(fresh):
    meta = read_checkpoint_metadata(fresh)
    # another detector's faces: served as uncalibrated (no error: the user calibrated nothing)
    assert read_calibration(fresh, meta, DetectorConfig("haar").settings()) is None
    assert read_calibration(fresh, meta, DetectorConfig(min_face=40).settings()) is None
    assert read_calibration(fresh, dict(meta, model_id="0123456789ab")) is None  # other weights
    assert read_calibration(fresh, dict(meta, input_kind="haar_crop")) is None
    assert read_calibration(fresh, {k: v for k, v in meta.items() if k != "pretrained"}) is None  # a trained model
    # no calibration, no LFW record: the card says so
    assert model_card(meta, fresh, None)["lfw_accuracy_pct"] is None
