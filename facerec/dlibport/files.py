"""Where dlib's model files come from: the ``face-recognition-models`` package (CC0 model files),
or a path the user gives. Nothing is downloaded. Each file is checked against its SHA-256 before
it is parsed, so a damaged or foreign file is refused with the expected digest.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# The files' names and digests are among dlib_resnet's facts; re-exported for the port's modules.
from facerec.dlibport.facts import RESNET, SHAPE_5, DlibModelFile  # noqa: F401
from facerec.errors import ArtifactMismatchError, DataNotFoundError
from facerec.io import cache_root, sha256_file


_PACKAGE = "face_recognition_models"


def cache_dir() -> Path:
    """Where parsed model files are cached: ``$FACEREC_CACHE`` (or ``~/.cache/facerec``) ``/dlib``."""
    return cache_root() / "dlib"
_INSTALL_HINT = "pip install face-recognition-models (CC0 model files; pip builds it from source)"


def package_models_dir() -> Path | None:
    """The ``models/`` folder of the installed ``face_recognition_models`` package, or None.

    Found with ``importlib.util.find_spec``: the package's ``__init__`` imports ``pkg_resources``,
    which recent setuptools no longer ship, so it must not be imported."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "models"


_verified: dict[tuple[str, int, int], str] = {}


def locate(model: DlibModelFile, path: str | os.PathLike | None = None) -> Path:
    """The verified path of ``model``: ``path`` if given, else the package's copy.

    Raises DataNotFoundError when the file is absent and ArtifactMismatchError when its SHA-256
    is not the expected one (truncated, re-trained, or another file)."""
    if path is None:
        folder = package_models_dir()
        if folder is None:
            raise DataNotFoundError(f"{model.name} ({model.what}) not found: the face-recognition-models package is not installed; {_INSTALL_HINT}")
        path = folder / model.name
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found: expected {model.what} ({model.name}); {_INSTALL_HINT}, or pass its path")
    digest = file_sha256(path)
    if digest != model.sha256:
        raise ArtifactMismatchError(
            f"{path} has SHA-256 {digest}, expected {model.sha256} ({model.name}, {model.what}): the file is damaged, "
            f"truncated or another model; reinstall face-recognition-models or pass the original file"
        )
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) so repeated loads hash it once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_file(path)
    return _verified[key]
