"""A writer killed in the middle of a delete: the delete is applied fully or not at all.

The delete runs in a child process that dies (``os._exit``) at a chosen point, the way a killed
replica stops: just before the manifest commit, or just after it (before the crops and
embeddings are scrubbed). A Retriever starting afterwards (or the next writer) finishes the job."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from facerec.gallery import GallerySnapshot, read_manifest

from .conftest import files_containing

CHILD = textwrap.dedent("""
    import os, sys
    import facerec.gallery.edit as edit
    gallery, point, identity = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def die(*args, **kwargs):
        os._exit(9)
    if point == "before_commit":
        edit.commit_manifest = die
    else:
        edit._redact_segment = die
    edit.delete_from_gallery(gallery, identity=identity)
""")


def _kill_during_delete(gallery, point: str, identity: int) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(gallery), point, str(identity)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 9, out.stderr[-2000:]


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_killed_delete_is_all_or_nothing(small_gallery, point):
    from facerec.serve.retriever import RetrieverCore

    g, ident = small_gallery["dir"], 104
    rows = np.flatnonzero(small_gallery["identities"] == ident)
    crops = [small_gallery["crops"][i] for i in rows]
    vectors = [small_gallery["embeddings"]["a"][i].tobytes() for i in rows]
    before = read_manifest(g)
    _kill_during_delete(g, point, ident)
    snap = GallerySnapshot.load(g)
    q = small_gallery["embeddings"]["a"][rows]
    found = {h["identity"] for row in snap.search("a", q, 1) for h in row}
    if point == "before_commit":
        assert read_manifest(g) == before and found == {ident}  # nothing applied
        assert all(files_containing(g, c) for c in crops)
    else:
        assert read_manifest(g)["version"] == before["version"] + 1 and ident not in found  # applied...
        assert all(files_containing(g, c) for c in crops)  # ...but its bytes not scrubbed yet
    # a replica starting now (Serve replaces the killed one) finishes what the dead writer began
    core = RetrieverCore(str(g), {"a": "id-a", "b": "id-b"})
    if point == "before_commit":
        assert core.snapshot.version == before["version"]
        assert {h["identity"] for row in core.search("a", q, 1)["results"] for h in row} == {ident}
        assert all(files_containing(g, c) for c in crops)
        assert sorted(p.name for p in (g / "segments").iterdir()) == ["s000001"]
    else:
        for needle in crops + vectors:
            assert files_containing(g, needle) == []
        assert not {h["identity"] for row in core.search("a", q, 5)["results"] for h in row} & {ident}
