"""The gallery a query is matched against, as its own package below ``eval`` and ``serve``:
the folder format and manifest (:mod:`~facerec.gallery.format`), one builder
(:mod:`~facerec.gallery.build`) with its embedding engines, ``local`` and ``ray`` (the Ray Data
pipeline of :mod:`~facerec.gallery.embed`), the build-index stage (:mod:`~facerec.gallery.build_index`:
a test split, initial-weight models), add / delete / display names / merge and move / compaction
(:mod:`~facerec.gallery.edit`), and the in-memory snapshot a Retriever searches
(:mod:`~facerec.gallery.snapshot`).
"""

from facerec.gallery.access import load_embeddings, load_saved_index, model_entry
from facerec.gallery.build import EMBED_ENGINES, GalleryBuildConfig, build_gallery
from facerec.gallery.edit import (
    CompactionPolicy,
    add_to_gallery,
    apply_erasures,
    compact,
    delete_from_gallery,
    merge_identities,
    move_image,
    photo_folder,
    recover,
    set_display_name,
)
from facerec.gallery.format import (
    CROPS,
    GALLERY_FORMAT,
    MANIFEST,
    manifest_fingerprint,
    read_manifest,
    write_lock,
)
from facerec.gallery.snapshot import GallerySnapshot, LoadedModel

__all__ = [
    "CROPS", "EMBED_ENGINES", "GALLERY_FORMAT", "MANIFEST", "CompactionPolicy", "GalleryBuildConfig", "GallerySnapshot",
    "LoadedModel", "add_to_gallery", "apply_erasures", "build_gallery", "compact", "delete_from_gallery", "load_embeddings",
    "load_saved_index", "manifest_fingerprint", "merge_identities", "model_entry", "move_image", "photo_folder", "read_manifest", "read_table", "recover",
    "set_display_name", "write_lock",
]


def read_table(gallery_dir):
    """The live rows of a gallery as a DataFrame (see :meth:`GallerySnapshot.table`)."""
    return GallerySnapshot.load(gallery_dir, models=[]).table()
