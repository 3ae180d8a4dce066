"""facerec.serve.local: what pipelines/serve.py and the benchmark resolve before starting."""

from __future__ import annotations

import pytest

from facerec.errors import ConfigError
from facerec.models.pretrained import parse_checkpoints
from facerec.serve.local import prepare_gallery


def test_parse_checkpoints(serve_artifacts):
    ck = serve_artifacts["checkpoints"]
    assert parse_checkpoints([f"a={ck['mnv3']}", f"b={ck['r18']}"]) == {"a": ck["mnv3"], "b": ck["r18"]}
    # a bare folder is named after the backbone its model.json records
    assert parse_checkpoints([ck["r18"]]) == {"resnet18": ck["r18"]}
    with pytest.raises(ConfigError, match=r"each model name once \('a' appears twice\)"):
        parse_checkpoints([f"a={ck['mnv3']}", f"a={ck['r18']}"])
    with pytest.raises(ConfigError, match=r"--checkpoint='=x'"):
        parse_checkpoints(["=x"])


def test_existing_gallery_is_reused(serve_artifacts, tmp_path):
    g = serve_artifacts["gallery"]
    gallery, ck = prepare_gallery(tmp_path, gallery=g)
    assert gallery == g
    assert {n: str(p) for n, p in ck.items()} == {n: str(__import__("pathlib").Path(p).resolve())
                                                   for n, p in serve_artifacts["checkpoints"].items()}
    # a checkpoint the gallery was not built with, and nothing to rebuild from: refused, named
    with pytest.raises(ConfigError, match=r"checkpoints=\['mnv3'\].*models indexed in"):
        prepare_gallery(tmp_path, gallery=g, checkpoints={"mnv3": serve_artifacts["checkpoints"]["r18"]})


def test_default_workdir_is_under_the_cache_root_read_at_each_call(serve_artifacts, tmp_path, monkeypatch):
    from facerec.serve.local import default_workdir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    assert default_workdir() == tmp_path / "cache" / "serve"
    prepare_gallery(gallery=serve_artifacts["gallery"])  # no workdir: the default one
    assert (tmp_path / "cache" / "serve").is_dir() and not (tmp_path / "home" / ".cache").exists()
    monkeypatch.delenv("FACEREC_CACHE")
    assert default_workdir() == tmp_path / "home" / ".cache" / "facerec" / "serve"
