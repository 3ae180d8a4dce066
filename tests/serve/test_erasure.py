"""A gallery delete erases what the server derived from its photos, and nothing brings it back.

In process (RetrieverCore): a delete records the erasure before its commit, scrubs the crops
cache and the other galleries of the same photo folder, names that folder in its answer, and a
later start or rebuild honours the list. End to end (``facerec serve --data`` as a user runs it,
on generated photos, and on celeba-sample): after ``DELETE /v1/gallery/identities/{id}`` and
``DELETE /v1/gallery/images/{id}``, a search returns k live rows and no file under
``$FACEREC_CACHE``, the serve workdir or Ray's temp folder holds an erased crop's bytes or lists
the erased photos, across a restart and a ``--rebuild`` over a crops cache as it was before the
delete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "erase-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _scan(folders: list[Path], needles: dict[str, bytes]) -> dict[str, list[str]]:
    """needle name -> every file under ``folders`` whose bytes hold it (each file read once)."""
    hits: dict[str, list[str]] = {}
    for folder in folders:
        for p in Path(folder).rglob("*"):
            try:
                if not p.is_file() or p.is_symlink():
                    continue
                data = p.read_bytes()
            except OSError:  # sockets, files removed meanwhile
                continue
            for name, needle in needles.items():
                if needle in data:
                    hits.setdefault(name, []).append(str(p))
    return hits


def _listed(cache_crops: Path) -> set[str]:
    """Every photo name a crops-cache folder lists: kept, dropped, resume parts."""
    names: set[str] = set()
    for folder in cache_crops.iterdir():
        if not folder.is_dir():
            continue
        for table in [folder / "crops.parquet", folder / "dropped.parquet", *(folder / "_parts").glob("part-*.parquet")]:
            if table.is_file():
                names |= set(pd.read_parquet(table)["image_id"])
    return names


# --------------------------------------------------------------------------------------------
# In process
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def derived(serve_artifacts, tmp_path, monkeypatch):
    """What `facerec serve --data PHOTOS` derives, made by the same library calls: the crops
    cache of the photos and two galleries of them in one workdir (two index kinds)."""
    from facerec.data.crops_cache import preprocessed
    from facerec.data.preprocess import PreprocessConfig
    from facerec.gallery import GalleryBuildConfig, build_gallery

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    crops = preprocessed(serve_artifacts["photos"], PreprocessConfig(engine="local"), progress=False)
    work = tmp_path / "work"
    galleries = {}
    for kind in ("exact", "kdtree"):
        galleries[kind] = work / f"gallery-{kind}"
        build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(galleries[kind]), kinds=[kind],
                                         checkpoints={"mnv3": serve_artifacts["checkpoints"]["mnv3"]}))
    kept = pd.read_parquet(crops / "crops.parquet")
    return {"photos": serve_artifacts["photos"], "crops": crops, "work": work, "galleries": galleries, "kept": kept,
            "cache": tmp_path / "cache", "stale": shutil.copytree(crops, tmp_path / "stale")}


def test_a_delete_erases_every_copy_and_says_where_the_photos_are(derived, serve_artifacts):
    from facerec.data.erasure import ErasureList
    from facerec.gallery import read_table
    from facerec.serve.local import prepare_gallery
    from facerec.serve.retriever import RetrieverCore

    kept, crops = derived["kept"], derived["crops"]
    sizes = kept.groupby("identity").size()
    victim = int(sizes.idxmax())
    single = kept.loc[kept["identity"] != victim, "image_id"].iloc[0]
    erased = set(kept.loc[kept["identity"] == victim, "image_id"]) | {single}
    needles = {n: (crops / "crops" / f"{n}.png").read_bytes() for n in erased}
    assert set(_scan([derived["cache"], derived["work"]], needles)) == erased  # everywhere before
    lst = ErasureList.default()
    core = RetrieverCore(str(derived["galleries"]["exact"]), {"mnv3": serve_artifacts["model_ids"]["mnv3"]},
                         erasure_list=str(lst.path))
    photos = str(derived["photos"].resolve())

    out = core.delete(identity=victim)
    assert out["deleted"] == int(sizes[victim]) and out["photo_folder"] == photos
    assert f"The photo folder {photos} is yours and was not changed: it still holds the photos of identity {victim}" \
        in out["message"]
    assert str(lst.path) in out["message"]
    # the identity (its photos added later stay out) and the names of the photos deleted (a
    # merge or move may have put another folder identity's photos under it)
    victim_names = set(kept.loc[kept["identity"] == victim, "image_id"])
    assert lst.of(photos).identities == {victim} and lst.of(photos).images == victim_names
    image_id = dict(zip(read_table(derived["galleries"]["exact"])["source_id"], read_table(derived["galleries"]["exact"])["image_id"]))[single]
    out = core.delete(image_ids=[image_id])
    assert out["source_ids"] == [single] and f"still holds the original photo {single}" in out["message"]
    assert lst.of(photos).images == victim_names | {single}

    def check() -> None:
        assert _scan([derived["cache"], derived["work"]], needles) == {}
        assert not _listed(derived["cache"] / "crops") & erased
        for g in derived["work"].iterdir():
            table = read_table(g)
            assert not set(table["source_id"]) & erased and victim not in set(table["identity"]), g

    check()  # the other gallery of the same photos too
    # A start over a gallery and a crops cache as they were before the delete (a copy restored
    # from a backup, a training run's cache): both come back without the erased photos.
    shutil.rmtree(crops)
    shutil.copytree(derived["stale"], crops)
    gallery, _ = prepare_gallery(derived["work"], data=derived["photos"], checkpoints={"mnv3": serve_artifacts["checkpoints"]["mnv3"]},
                                 index_kind="exact", preprocess_engine="local", rebuild=True)
    assert gallery.parent == derived["work"] and len(read_table(gallery)) == len(kept) - len(erased)
    check()
    old = derived["work"].parent / "old-gallery"
    shutil.copytree(serve_artifacts["gallery"], old)  # built from the same photos before any delete
    prepare_gallery(derived["work"], gallery=old)
    assert not set(read_table(old)["identity"]) & {victim} and single not in set(read_table(old)["source_id"])


def test_an_unlabelled_gallerys_delete_records_the_photos_not_the_cluster_id(derived, serve_artifacts):
    """An unlabelled folder's people are clusters the server numbered; preprocessing knows no such
    identity, so only the photos' names keep them out of a rebuild."""
    from facerec.data.erasure import ErasureList
    from facerec.gallery import read_manifest
    from facerec.gallery.format import MANIFEST
    from facerec.serve.retriever import RetrieverCore

    g = derived["galleries"]["kdtree"]
    manifest = read_manifest(g)
    (g / MANIFEST).write_text(json.dumps({**manifest, "labelled": False}))
    kept = derived["kept"]
    victim = int(kept.groupby("identity").size().idxmax())
    lst = ErasureList.default()
    core = RetrieverCore(str(g), {"mnv3": serve_artifacts["model_ids"]["mnv3"]}, erasure_list=str(lst.path))
    core.delete(identity=victim)
    photos = str(derived["photos"].resolve())
    assert lst.of(photos).identities == frozenset()
    assert lst.of(photos).images == set(kept.loc[kept["identity"] == victim, "image_id"])


def test_an_erasure_that_cannot_be_recorded_deletes_nothing(derived, serve_artifacts, tmp_path):
    from facerec.gallery import read_manifest
    from facerec.serve.retriever import RetrieverCore, _answer

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    g = derived["galleries"]["exact"]
    core = RetrieverCore(str(g), {"mnv3": serve_artifacts["model_ids"]["mnv3"]}, erasure_list=str(blocker / "erased.json"))
    before = read_manifest(g)
    victim = int(derived["kept"]["identity"].iloc[0])
    out = _answer(core.delete, None, victim)
    assert out["ok"] is False and out["status"] == 503
    assert out["message"].startswith(f"cannot record the erasure in {blocker / 'erased.json'}") and "nothing was deleted" in out["message"]
    assert read_manifest(g) == before


def test_without_an_erasure_list_a_delete_still_names_the_photo_folder(derived, serve_artifacts):
    """A ServeConfig without ``erasure_list`` (a library user's app) reaches the gallery only,
    and says so by not claiming more."""
    from facerec.data.erasure import ErasureList
    from facerec.serve.retriever import RetrieverCore

    core = RetrieverCore(str(derived["galleries"]["exact"]), {"mnv3": serve_artifacts["model_ids"]["mnv3"]})
    victim = int(derived["kept"]["identity"].iloc[0])
    out = core.delete(identity=victim)
    assert out["photo_folder"] == str(derived["photos"].resolve()) and "still holds" in out["message"]
    assert "erasure is recorded" not in out["message"] and not ErasureList.default().path.exists()
    assert victim in set(pd.read_parquet(derived["crops"] / "crops.parquet")["identity"])


# --------------------------------------------------------------------------------------------
# End to end: `facerec serve --data` in its own processes
# --------------------------------------------------------------------------------------------


class Server:
    """``facerec serve`` as a user starts it (its own Ray under ``ray_tmp``); stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, timeout: float = 600):
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        ready = threading.Event()
        self.proc = subprocess.Popen([sys.executable, "-m", "facerec.cli", "serve", *args, "--port", str(port)],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if "to stop." in line:
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        try:
            if not ready.wait(timeout) or self.proc.poll() is not None:
                raise AssertionError("facerec serve did not start:\n" + "".join(self.lines[-60:]))
        except BaseException:  # a test timeout too: never leave the server and its Ray running
            self.stop()
            raise

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return "".join(self.lines)


def _search(url: str, photo: bytes, k: int) -> list[dict]:
    r = httpx.post(f"{url}/v1/search", params={"k": k}, files={"image": ("q.jpg", photo, "image/jpeg")}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["results"]


def _erase_end_to_end(photos_dir: Path, queries: list[tuple[str, bytes]], checkpoint: str, tmp_path: Path, k: int,
                      free_port, victim: int | None = None, timeout: float = 600) -> dict:
    """Start `facerec serve --data photos_dir`, delete an identity (``victim``, default: the one
    with the most photos) and one photo of another, check, restart, check, restart with
    --rebuild over the crops cache as it was before the delete, check. Returns figures."""
    from facerec.gallery import read_table

    ray_tmp = Path(tempfile.mkdtemp(prefix="er-", dir="/tmp"))  # short: it holds Unix sockets
    cache, work = tmp_path / "cache", tmp_path / "work"
    env = {k_: v for k_, v in os.environ.items() if k_ not in ("RAY_ADDRESS", "FACEREC_GALLERY_TOKEN", "FACEREC_READ_TOKEN")}
    env.update(HOME=str(tmp_path / "home"), FACEREC_CACHE=str(cache), RAY_TMPDIR=str(ray_tmp),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    (tmp_path / "home").mkdir(parents=True)
    args = ["--data", str(photos_dir), "--checkpoint", f"mnv3={checkpoint}", "--allow-untrained", "--token", TOKEN,
            "--num-cpus", "2", "--model-cpus", "0.5", "--max-batch-size", "4", "--workdir", str(work)]
    photos = str(photos_dir.resolve())
    try:
        server = Server(args, env, free_port(), timeout)
        try:
            (crops,) = [p for p in (cache / "crops").iterdir() if p.is_dir()]
            (gallery,) = [p for p in work.iterdir() if p.name.startswith("gallery-")]
            kept = pd.read_parquet(crops / "crops.parquet")
            sizes = kept.groupby("identity").size()
            victim = int(sizes.idxmax()) if victim is None else victim
            table = read_table(gallery)
            # one photo of the largest other person: they keep enough photos to stay in the crops table
            other = table.loc[table["identity"] != victim].groupby("identity").size().idxmax()
            single = table.loc[table["identity"] == other, "source_id"].iloc[-1]
            erased = set(kept.loc[kept["identity"] == victim, "image_id"]) | {single}
            needles = {n: (crops / "crops" / f"{n}.png").read_bytes() for n in erased}
            stale = shutil.copytree(crops, tmp_path / "stale-crops")  # the cache as it was: restored before --rebuild
            query = next(data for name, data in queries if name not in erased and name in set(kept["image_id"]))

            r = httpx.delete(f"{server.url}/v1/gallery/identities/{victim}", headers=AUTH, timeout=120)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["deleted"] == int(sizes[victim]) and body["photo_folder"] == photos
            assert f"The photo folder {photos} is yours and was not changed" in body["message"]
            image_id = table.loc[table["source_id"] == single, "image_id"].iloc[0]
            r = httpx.delete(f"{server.url}/v1/gallery/images/{image_id}", headers=AUTH, timeout=120)
            assert r.status_code == 200 and r.json()["photo_folder"] == photos, r.text
            assert f"still holds the original photo {single}" in r.json()["message"]
            erased_ids = {image_id, *table.loc[table["identity"] == victim, "image_id"]}

            def check(url: str, when: str) -> None:
                hits = _search(url, query, k)
                assert len(hits) == k, (when, len(hits))
                assert all(h["identity"] != victim and h["image_id"] not in erased_ids for h in hits), when
                every = _search(url, query, 1000)  # the whole gallery (up to the k limit), live rows only
                assert len(every) == min(1000, len(kept) - len(erased)), (when, len(every))
                assert all(h["identity"] != victim and h["image_id"] not in erased_ids for h in every), when
                listed = httpx.get(f"{url}/v1/gallery/identities", params={"limit": 1000}, timeout=60).json()["identities"]
                assert victim not in {x["identity"] for x in listed}, when
                left = _scan([cache, work, ray_tmp], needles)
                assert left == {}, f"{when}: bytes of erased crops still in {left}"
                assert not _listed(cache / "crops") & erased, when
                table_now = read_table(gallery)
                assert not set(table_now["source_id"]) & erased and victim not in set(table_now["identity"]), when

            check(server.url, "after the deletes")
        finally:
            out = server.stop()
        assert "Traceback" not in out, out[-3000:]

        server = Server(args, env, free_port(), timeout)
        try:
            check(server.url, "after a restart")
        finally:
            server.stop()

        shutil.rmtree(crops)
        shutil.copytree(stale, crops)
        shutil.rmtree(stale)
        server = Server([*args, "--rebuild"], env, free_port(), timeout)
        try:
            check(server.url, "after --rebuild over the old crops cache")
            rows = len(read_table(gallery))
        finally:
            out = server.stop()
        assert "Traceback" not in out, out[-3000:]
        assert rows == len(kept) - len(erased)
        listed = json.loads((cache / "erased.json").read_text())["sources"][photos]
        assert listed["identities"] == [victim] and listed["images"] == sorted(erased)  # the victim's photos and single
        return {"kept": len(kept), "erased": len(erased), "victim": victim}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow  # three `facerec serve` starts, each with its own Ray (~1 min each on 2 CPUs)
@pytest.mark.timeout(1800)
def test_erased_person_never_comes_back(serve_artifacts, photos, tmp_path, free_port):
    out = _erase_end_to_end(serve_artifacts["photos"], photos, serve_artifacts["checkpoints"]["mnv3"], tmp_path, k=5,
                           free_port=free_port)
    assert out["erased"] >= 4


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(1800)
def test_erased_person_never_comes_back_on_celeba_sample(celeba_sample, serve_artifacts, tmp_path, free_port):
    """The issue's report: identity 7256 of celeba-sample (30 photos), with the photos of the nine
    people listed most often beside it. All 5,101 photos would take a quarter of an hour of
    preprocessing and two gallery builds on two CPUs; the folder here is the same photos, linked,
    in the same layout."""
    from facerec.data.celeba import IDENTITY_FILE, read_identities

    listing = read_identities(celeba_sample / IDENTITY_FILE)
    others = listing.loc[listing["identity"] != 7256, "identity"].value_counts().index[:9]
    subset = listing[listing["identity"].isin([7256, *others])]
    photos = tmp_path / "celeba-sample"
    (photos / "img_celeba").mkdir(parents=True)
    for name in subset["image_id"]:
        (photos / "img_celeba" / name).symlink_to(celeba_sample / "img_celeba" / name)
    (photos / IDENTITY_FILE).write_text("".join(f"{a} {b}\n" for a, b in zip(subset["image_id"], subset["identity"])))
    queries = [(n, (celeba_sample / "img_celeba" / n).read_bytes()) for n in subset.loc[subset["identity"] != 7256, "image_id"]]
    out = _erase_end_to_end(photos, queries, serve_artifacts["checkpoints"]["mnv3"], tmp_path / "run", k=9, victim=7256,
                            free_port=free_port, timeout=900)
    assert out["erased"] >= 20 and out["kept"] >= 250
