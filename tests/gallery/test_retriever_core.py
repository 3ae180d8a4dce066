"""The Retriever's core on a synthetic gallery: two replicas of one gallery, a write by one is
applied by the other incrementally (reusing its base segment), duplicates are not added twice,
deletes answer 404 for what does not exist."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import ConfigError, NotFoundError

from .conftest import png, unit

MODELS = {"a": "id-a", "b": "id-b"}


def _core(g):
    from facerec.serve.retriever import RetrieverCore

    return RetrieverCore(str(g), MODELS)


def test_two_replicas_apply_each_others_writes(small_gallery):
    g = small_gallery["dir"]
    r1, r2 = _core(g), _core(g)
    base2 = r2.snapshot.segments[0]
    rng = np.random.default_rng(9)
    e = {"a": unit(rng, 1, 16), "b": unit(rng, 1, 8)}
    out = r1.add(e, [777], [png(4242)], display_name="Lin")
    assert out["duplicate_of"] == [None] and out["rows"] == 61
    assert r2.search("a", e["a"], 1)["results"][0][0]["row_id"] != out["row_ids"][0]  # not yet applied
    info = r2.reload()
    assert info["version"] == out["version"] and info["rows"] == 61
    assert r2.snapshot.segments[0] is base2  # applied incrementally: the base was not reloaded
    top = r2.search("a", e["a"], 1)["results"][0][0]
    assert top["image_id"] == out["image_ids"][0] and top["display_name"] == "Lin"
    assert r2.crop_bytes(out["image_ids"][0]) == png(4242)
    # delete through replica 2: replica 1 stops answering with it once it applies the version
    d = r2.delete(identity=777)
    assert d["deleted"] == 1 and d["rows"] == 60
    r1.reload()
    assert r1.snapshot.segments[0] is not None and r1.crop_bytes(out["image_ids"][0]) is None
    assert all(h["identity"] != 777 for h in r1.search("a", e["a"], 60)["results"][0])
    with pytest.raises(NotFoundError, match="identity 777"):
        r1.delete(identity=777)
    assert r1.identities(3)["identities"][0] == {"identity": 100, "images": 5, "display_name": None}


def test_duplicates_are_not_added_twice(small_gallery):
    g = small_gallery["dir"]
    core = _core(g)
    rng = np.random.default_rng(1)
    e = {"a": unit(rng, 3, 16), "b": unit(rng, 3, 8)}
    existing = small_gallery["crops"][0]  # identity 100's first crop
    out = core.add(e, [100, 5, 5], [existing, png(1), png(1)])
    first_id = small_gallery["image_ids"][0]
    assert out["duplicate_of"][0] == first_id and out["image_ids"][0] == first_id and out["row_ids"][0] == 0
    assert out["duplicate_of"][1] is None
    assert out["duplicate_of"][2] == out["image_ids"][1] == out["image_ids"][2]  # repeated in the request
    assert out["rows"] == 61
    # the same bytes under another identity are another person's photo: added
    out2 = core.add({"a": e["a"][:1], "b": e["b"][:1]}, [6], [existing])
    assert out2["duplicate_of"] == [None] and out2["rows"] == 62
    with pytest.raises(ConfigError, match=r"identity=9007199254740992 is invalid"):
        core.add({"a": e["a"][:1], "b": e["b"][:1]}, [2**53], [png(3)])
