"""Exception types raised on bad user input.

Each is a subclass of the builtin a caller would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` keeps working, while the message names the file, line or field, the
value received and how to fix it.
"""

from __future__ import annotations


class FacerecError(Exception):
    """Base class of every error facerec raises on purpose."""


class ConfigError(FacerecError, ValueError):
    """A configuration field has a value that cannot work; raised before any worker starts."""

    def __init__(self, field: str, value, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}={value!r} is invalid: expected {expected}.")


class AnnotationError(FacerecError, ValueError):
    """A line of an annotation file (CelebA/LFW format) is malformed."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


class DataNotFoundError(FacerecError, FileNotFoundError):
    """A data folder or file the stage needs is absent."""


class AmbiguousLayoutError(FacerecError, ValueError):
    """A photo folder that could be read in several layouts (``facerec.data.layouts``)."""

    def __init__(self, root, layouts: list[str], why: str):
        self.root, self.layouts = str(root), list(layouts)
        super().__init__(f"{root}: the photo folder's layout is ambiguous: it could be {' or '.join(layouts)} ({why}); "
                         f"pass --layout {' or --layout '.join(layouts)}")


class ImageDecodeError(FacerecError, ValueError):
    """An image could not be decoded. ``reason`` is a short drop-manifest code."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class ArtifactMismatchError(FacerecError, ValueError):
    """An artifact (crops table, checkpoint, embeddings, index) does not match what reads it:
    another model, another embedding dimension, another data version, or damaged contents."""


class DeploymentStartError(FacerecError, RuntimeError):
    """A Serve application whose replicas failed to start: names the deployment and its error."""


class NotFoundError(FacerecError, LookupError):
    """A gallery image or identity named by a request does not exist (or was deleted)."""


class ConflictError(FacerecError, ValueError):
    """A gallery edit that contradicts the gallery's state (e.g. moving an image to the identity it
    already has): nothing was changed (HTTP 409)."""
