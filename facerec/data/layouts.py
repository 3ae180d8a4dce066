"""The photo-folder layouts every stage that takes ``--data`` reads, and how one is recognised.

```
celeba             ROOT/identity_CelebA.txt + ROOT/img_align_celeba/ (facerec.data.celeba)
folder_per_person  ROOT/<person>/*.jpg          LFW's lfw-deepfunneled, VGGFace2, CASIA-WebFace,
                                               face_recognition's known-people folders
unlabelled         ROOT/**/*.jpg                a photo library or a camera dump: nobody is known
```

:func:`read_photos` returns the table :func:`facerec.data.celeba.load_celeba` returns (image_id,
identity, partition, the 40 attributes) for every layout, so preprocessing has one input:

- ``image_id`` is the photo's path relative to ``df.attrs["image_dir"]``, with ``/`` separators
  (``George_W_Bush/George_W_Bush_0001.jpg``);
- folder per person: ``identity`` is :func:`person_identity` of the folder's name, a number that
  depends on that name alone, so adding or removing other people never renumbers anyone (an
  erasure, ``facerec.data.erasure``, names people by number: a renumbering would erase someone
  else); ``df.attrs["display_names"]`` maps each number to the folder's name (Unicode NFC);
- unlabelled: ``identity`` is :data:`UNLABELLED` (-1) on every row and ``df.attrs["labelled"]`` is
  False: no stage may treat the rows as one person.

Photos are the files whose suffix is one of :data:`IMAGE_SUFFIXES` (any case); hidden files and
folders (``.name``, e.g. macOS's ``._x.jpg``) are skipped, and other files are listed in
``df.attrs["ignored"]``. The files are not opened here: a bad photo (empty, truncated, not an
image, too large) is dropped by the cropper with the same reasons as a CelebA photo
(``facerec.data.schema.DROP_REASONS``), and decoding applies the EXIF orientation
(``facerec.data.images.decode_image``).

:func:`detect_layout` recognises a folder: CelebA when it holds ``identity_CelebA.txt`` (or a
CelebA image folder); folder per person when it holds no photos itself and every sub-folder with
photos holds some directly; unlabelled when it holds photos at its top level or only in deeper
folders. A folder with photos at its top level *and* sub-folders holding photos directly could
be either: :class:`facerec.errors.AmbiguousLayoutError` says so, and ``--layout`` decides.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import AmbiguousLayoutError, ConfigError, DataNotFoundError
from facerec.registry import Registry

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
UNLABELLED = -1
"""The identity of every photo of an unlabelled folder: no person is known."""


@dataclass(frozen=True)
class Layout:
    """One photo-folder layout: its name, whether it names people, and its reader
    (root -> the table :func:`read_photos` documents)."""

    name: str
    labelled: bool
    description: str
    read: Callable[[Path], pd.DataFrame]


LAYOUTS: Registry[Layout] = Registry("layout")


def _register(layout: Layout) -> Layout:
    LAYOUTS.register(layout.name)(layout)
    return layout


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(folder: Path, rel: str = "") -> tuple[list[str], list[str]]:
    """(photos, other files) under ``folder``, recursively, as sorted ``/``-joined paths
    relative to it prefixed with ``rel``; hidden entries skipped, folder links not followed
    (a link to an ancestor would loop)."""
    photos, other = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        sub = Path(dirpath).relative_to(folder).as_posix()
        prefix = rel + ("" if sub == "." else sub + "/")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (photos if is_image_name(name) else other).append(prefix + name)
    return photos, other


def _top_level(root: Path) -> tuple[list[str], list[str]]:
    """(photo file names, visible sub-folder names) directly in ``root``, sorted."""
    photos, folders = [], []
    with os.scandir(root) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                folders.append(e.name)
            elif e.is_file() and is_image_name(e.name):
                photos.append(e.name)
    return sorted(photos), sorted(folders)


def _holds_photos_directly(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.is_file() and is_image_name(e.name) for e in it)
    except OSError:
        return False


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {root} does not exist. Pass --data PATH to a photo folder "
                                f"(layouts: {', '.join(LAYOUTS.names())}), or omit --data to use the embedded "
                                "synthetic dataset.")


def _frame(image_ids: list[str], identities: np.ndarray, root: Path, layout: Layout, **attrs) -> pd.DataFrame:
    """The table ``load_celeba`` returns, for photos without partition or attributes."""
    df = pd.DataFrame({"image_id": pd.Series(image_ids, dtype=object),
                       "identity": np.asarray(identities, dtype=np.int64),
                       "partition": np.full(len(image_ids), -1, dtype=np.int8)})
    attr = pd.DataFrame(np.zeros((len(df), len(ATTRIBUTE_NAMES)), dtype=np.int8), columns=list(ATTRIBUTE_NAMES))
    df = pd.concat([df, attr], axis=1)
    df.attrs.update({"image_dir": str(root), "layout": layout.name, "labelled": layout.labelled,
                     "found": {"identities": layout.labelled, "attributes": False, "partition": False}, **attrs})
    return df


def display_name(folder_name: str) -> str:
    """A person's name as shown: the folder's name in Unicode NFC (macOS writes names decomposed)."""
    return unicodedata.normalize("NFC", folder_name)


def person_identity(name: str) -> int:
    """The identity number of the person named ``name`` (a folder name, NFC): 48 bits of its
    SHA-256, below JavaScript's 2**53 (the web page reads identities as numbers) and the same on
    every machine and every run."""
    return int(hashlib.sha256(display_name(name).encode("utf-8")).hexdigest()[:12], 16)


def read_folder_per_person(root: Path) -> pd.DataFrame:
    """``ROOT/<person>/...``: every photo under a person's folder (nested folders included) is that
    person's. Photos at the top level belong to nobody and are listed in ``attrs["ignored"]``;
    person folders without photos in ``attrs["empty_people"]``."""
    root = Path(root)
    _check_root(root)
    top_photos, folders = _top_level(root)
    top_other = sorted(e.name for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")
                       and not is_image_name(e.name))
    image_ids, identities, names, empty, ignored = [], [], {}, [], sorted(top_photos + top_other)
    for folder in folders:
        photos, other = _walk(root / folder, folder + "/")
        ignored += other
        if not photos:
            empty.append(folder)
            continue
        name = display_name(folder)
        ident = person_identity(name)
        if ident in names:  # two names, one 48-bit hash: odds ~1e-3 at a million people
            raise ConfigError("--data", str(root), f"person folders with distinct identity numbers; {names[ident]!r} "
                                                   f"and {name!r} share {ident}: rename one of the folders")
        names[ident] = name
        image_ids += photos
        identities += [ident] * len(photos)
    if not image_ids:
        raise DataNotFoundError(f"{root} holds no photos in person folders (ROOT/<person>/*.jpg; suffixes "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return _frame(image_ids, np.array(identities), root, LAYOUTS.get("folder_per_person"), display_names=names,
                  empty_people=empty, ignored=ignored)


def read_unlabelled(root: Path) -> pd.DataFrame:
    """Every photo under ``ROOT``, recursively; identity :data:`UNLABELLED` on every row."""
    root = Path(root)
    _check_root(root)
    photos, other = _walk(root)
    if not photos:
        raise DataNotFoundError(f"{root} holds no photos (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}, "
                                "in it or in any folder below it)")
    return _frame(photos, np.full(len(photos), UNLABELLED), root, LAYOUTS.get("unlabelled"), display_names={},
                  empty_people=[], ignored=other)


def read_celeba(root: Path) -> pd.DataFrame:
    from facerec.data.celeba import load_celeba

    df = load_celeba(root)
    df.attrs.update({"layout": "celeba", "labelled": True, "display_names": {}, "empty_people": [], "ignored": []})
    return df


_register(Layout("celeba", True, "identity_CelebA.txt + img_align_celeba/ (the official CelebA layout)", read_celeba))
_register(Layout("folder_per_person", True, "ROOT/<person>/*.jpg: one folder per person, named after them",
                 read_folder_per_person))
_register(Layout("unlabelled", False, "ROOT/**/*.jpg: photos of unknown people, in any folders", read_unlabelled))


def _looks_celeba(root: Path) -> bool:
    from facerec.data.celeba import IDENTITY_FILE, IMAGE_DIRS

    return (root / IDENTITY_FILE).is_file() or any((root / d).is_dir() for d in IMAGE_DIRS)


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def detect_layout(root: str | os.PathLike) -> str:
    """The layout name of the photo folder ``root`` (see the module docstring for the rules)."""
    root = Path(root)
    _check_root(root)
    if _looks_celeba(root):
        return "celeba"
    top_photos, folders = _top_level(root)
    people = [f for f in folders if _holds_photos_directly(root / f)]
    if top_photos and people:
        raise AmbiguousLayoutError(
            root, ["folder_per_person", "unlabelled"],
            f"it holds {len(top_photos)} photo(s) at its top level ({_sample(top_photos)}) and {len(people)} "
            f"sub-folder(s) of photos ({_sample(people)})")
    if top_photos:
        return "unlabelled"
    if people:
        deeper_only = [f for f in folders if f not in people and _walk(root / f)[0]]
        # Folders whose photos all sit deeper (ROOT/2019/01/x.jpg) are a library, not people.
        return "unlabelled" if deeper_only else "folder_per_person"
    if any(_walk(root / f)[0] for f in folders):
        return "unlabelled"
    raise DataNotFoundError(f"{root} holds no photos (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}) and no "
                            "identity_CelebA.txt: point --data at a photo folder")


def resolve_layout(root: str | os.PathLike, layout: str | None = None) -> str:
    """``layout`` checked against :data:`LAYOUTS` (a :class:`ConfigError` listing them), or the
    detected layout of ``root`` when None."""
    if layout is None:
        return detect_layout(root)
    return LAYOUTS.get(layout).name


def read_photos(root: str | os.PathLike, layout: str | None = None) -> pd.DataFrame:
    """The photos of ``root`` read as ``layout`` (None: :func:`detect_layout`): the columns of
    :func:`facerec.data.celeba.load_celeba`, and in ``df.attrs``: ``image_dir`` (what image_id is
    relative to), ``layout``, ``labelled``, ``display_names`` ({identity: name}; empty for CelebA
    and unlabelled folders), ``found``, ``empty_people`` and ``ignored`` (non-photo files)."""
    root = Path(root)
    return LAYOUTS.get(resolve_layout(root, layout)).read(root)


def is_labelled(layout: str) -> bool:
    return LAYOUTS.get(layout).labelled


def require_labelled(root: str | os.PathLike, layout: str | None, stage: str, flag: str = "--data") -> str:
    """The resolved layout of ``root``; a :class:`ConfigError` when it names nobody (``stage``
    learns or measures identities)."""
    name = resolve_layout(root, layout)
    if not is_labelled(name):
        raise ConfigError(flag, str(root), f"a labelled photo folder for {stage} (layout celeba or folder_per_person; "
                                           f"this one was read as {name}, whose photos name nobody): "
                                           "pass --layout folder_per_person if its sub-folders are people")
    return name


def listing_fingerprint(root: str | os.PathLike, layout: str) -> str:
    """What identifies the photos a folder-layout read lists, cheaply: their paths, sizes and
    modification times (CelebA's listing is identified by ``facerec.data.crops_cache``)."""
    root = Path(root)
    photos, _ = _walk(root)
    h = hashlib.sha256(layout.encode())
    entries = []
    for rel in photos:
        st = (root / rel).stat()
        entries.append((rel, st.st_size, st.st_mtime_ns))
    h.update(json.dumps(entries).encode())
    return h.hexdigest()[:16]
