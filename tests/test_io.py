import os
import sys

import pytest

from facerec import io


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_bytes_leaves_only_the_target(tmp_path, fsync):
    target = tmp_path / "sub" / "a.jpg"
    io.atomic_write_bytes(target, b"old", fsync=fsync)
    io.atomic_write_bytes(target, b"new bytes", fsync=fsync)
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.jpg"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    io.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(target, fsync=False) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_sync_filesystem_uses_syncfs_on_linux(tmp_path):
    if sys.platform.startswith("linux"):
        assert io._SYNCFS is not None  # os.sync() would flush every filesystem of the machine
    io.atomic_write_bytes(tmp_path / "x", b"x", fsync=False)
    io.sync_filesystem(tmp_path)  # returns without error on a real folder


def test_sync_filesystem_names_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        io.sync_filesystem(tmp_path / "nope")


def test_read_json_object_names_the_file_and_the_fix(tmp_path):
    from facerec.errors import ArtifactMismatchError, DataNotFoundError

    path = tmp_path / "a.json"
    with pytest.raises(DataNotFoundError, match=r"a\.json not found; remake it"):
        io.read_json_object(path, fix="remake it")
    with pytest.raises(DataNotFoundError, match=r"^why$"):
        io.read_json_object(path, fix="remake it", not_found="why")
    for text, message in [("{not json", r"a\.json is not valid JSON \(.*\); remake it"),
                          ("[1]", r"a\.json: expected a JSON object, found list; remake it"),
                          ('{"x": 1}', r"a\.json lacks the keys \['y'\]; remake it")]:
        path.write_text(text)
        with pytest.raises(ArtifactMismatchError, match=message):
            io.read_json_object(path, fix="remake it", keys=("x", "y"))
    path.write_text('{"x": 1, "y": 2}')
    assert io.read_json_object(path, fix="remake it", keys=("x", "y")) == {"x": 1, "y": 2}
