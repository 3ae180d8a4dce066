"""Adding and deleting at scale: bytes written and time until every Retriever replica answers
with the change, segments + tombstones (facerec.gallery) against the full rewrite of format 1.

    python benchmarks/bench_gallery.py                      # 200,000 rows, 128-d, 2 replicas
    python benchmarks/bench_gallery.py --rows 20000 --replicas 2 --kind hnsw

One synthetic gallery (random unit embeddings, ~20 images per identity spread over the rows like
CelebA's) is written in both formats. The baseline is the previous implementation itself,
``facerec/serve/gallery.py`` and ``facerec/serve/retriever.py`` read from git at ``--baseline-rev``
and run in the same process and cluster: an add rewrites the table, the index and the embeddings;
a delete (which it did not have) is the same full rewrite without the identity's rows. Each
implementation runs ``--replicas`` replicas (Ray actors running that implementation's
RetrieverCore, polling ``gallery.json`` every ``--poll-s``), then: add one photo, delete one
identity. Bytes written are the writer's write() bytes (``/proc/self/io`` wchar); "visible" is
the time from the start of the write until every replica's search answers with the change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "m"


def wchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar (Linux only)")


def git_source(rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def load_baseline(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The format-1 gallery and retriever modules of ``rev``, importable side by side with today's."""
    gal = types.ModuleType("facerec_v1_gallery")
    sys.modules["facerec_v1_gallery"] = gal  # before exec: its dataclasses look their module up
    exec(compile(git_source(rev, "facerec/serve/gallery.py"), f"{rev}:facerec/serve/gallery.py", "exec"), gal.__dict__)
    src = git_source(rev, "facerec/serve/retriever.py").replace("from facerec.serve.gallery import", "from facerec_v1_gallery import")
    ret = types.ModuleType("facerec_v1_retriever")
    sys.modules["facerec_v1_retriever"] = ret
    exec(compile(src, f"{rev}:facerec/serve/retriever.py", "exec"), ret.__dict__)
    return gal, ret


def crop_png(seed: int, side: int) -> bytes:
    from facerec.data.images import encode_png

    return encode_png(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def synthetic(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(rows, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    identities = rng.integers(0, max(1, rows // 20), size=rows).astype(np.int64)
    return emb, identities


def build_new(out: Path, emb: np.ndarray, identities: np.ndarray, kind: str, tiny: bytes) -> None:
    from facerec.gallery.build import write_gallery
    from facerec.gallery.edit import make_rows
    from facerec.gallery.format import crop_rel, new_image_id

    ids = [new_image_id() for _ in range(len(emb))]
    (out / "crops").mkdir(parents=True)
    for i in ids:
        (out / crop_rel(i, ".png")).write_bytes(tiny)
    rows = make_rows(np.arange(len(emb)), identities, ids, [".png"] * len(emb), 0)
    write_gallery(out, rows, {MODEL: emb}, {MODEL: {"model_id": "bench", "embedding_dim": emb.shape[1]}}, [kind])


def build_old(gal, out: Path, emb: np.ndarray, identities: np.ndarray, kind: str, tiny: bytes) -> None:
    """Format 1 as the previous build_gallery wrote it (without a model: the embeddings are given)."""
    from facerec.data.schema import ATTRIBUTE_NAMES
    from facerec.index import build_index
    from facerec.io import atomic_write_json, atomic_write_parquet

    n = len(emb)
    (out / gal.CROPS).mkdir(parents=True)
    table = pd.DataFrame({"row_id": np.arange(n, dtype=np.int64), "image_id": [f"{i:06d}.png" for i in range(n)],
                          "identity": identities, "crop_path": [f"{gal.CROPS}/{i:06d}.png" for i in range(n)],
                          "source": "dataset"})
    for c in ("box_x", "box_y", "box_w", "box_h"):
        table[c] = np.int32(0)
    for a in ATTRIBUTE_NAMES:
        table[a] = np.int8(0)
    for rel in table["crop_path"]:
        (out / rel).write_bytes(tiny)
    rel = gal._version_dir(MODEL, 1)
    gal._publish_index(out, rel, build_index(kind, emb, table["row_id"].to_numpy()), emb,
                       {"model_id": "bench", "embedding_dim": emb.shape[1], "gallery_version": 1})
    atomic_write_parquet(out / gal.TABLE, table, metadata={"gallery_version": 1})
    atomic_write_json(out / gal.MANIFEST, {
        "format": gal.GALLERY_FORMAT, "version": 1, "rows": n, "crop_size": 150, "margin": 0.2, "data_version": None,
        "models": {MODEL: {"model_id": "bench", "embedding_dim": emb.shape[1], "index_kind": kind, "index_params": {},
                           "path": rel}}})


def old_delete_identity(gal, gallery: Path, identity: int) -> None:
    """What deleting an identity costs in format 1: every row renumbered, the index rebuilt, the
    table, index and embeddings rewritten as a new version (it had no delete; this is the rewrite
    an add does, minus the identity's rows)."""
    from facerec.index import build_index
    from facerec.io import atomic_write_json, atomic_write_parquet

    with gal.write_lock(gallery):
        manifest = gal.read_manifest(gallery)
        table = pd.read_parquet(gallery / gal.TABLE)
        keep = table["identity"].to_numpy() != identity
        for rel in table.loc[~keep, "crop_path"]:
            (gallery / rel).unlink(missing_ok=True)
        table = table[keep].reset_index(drop=True)
        table["row_id"] = np.arange(len(table), dtype=np.int64)
        version = int(manifest["version"]) + 1
        models = {}
        for name, entry in manifest["models"].items():
            emb = np.load(gallery / entry["path"] / "embeddings.npy")[keep]
            rel = gal._version_dir(name, version)
            gal._publish_index(gallery, rel, build_index(entry["index_kind"], emb, table["row_id"].to_numpy()), emb,
                               {"model_id": entry["model_id"], "embedding_dim": int(entry["embedding_dim"]),
                                "gallery_version": version})
            models[name] = {**entry, "path": rel}
        atomic_write_parquet(gallery / gal.TABLE, table, metadata={"gallery_version": version})
        manifest = {**manifest, "version": version, "rows": int(len(table)), "models": models}
        atomic_write_json(gallery / gal.MANIFEST, manifest)
        gal._prune(gallery, manifest)


def make_replica_class():
    import ray

    @ray.remote(num_cpus=0)
    class Replica:
        """One Retriever replica of either implementation: its RetrieverCore and a thread
        applying new versions every ``poll_s``, like the Retriever deployment."""

        def __init__(self, impl: str, gallery: str, poll_s: float, rev: str):
            if impl == "new":
                from facerec.serve.retriever import RetrieverCore
            else:
                RetrieverCore = load_baseline(rev)[1].RetrieverCore
            self.core = RetrieverCore(gallery, {MODEL: "bench"})
            self.stop = threading.Event()
            threading.Thread(target=self._watch, args=(poll_s,), daemon=True).start()

        def _watch(self, poll_s: float) -> None:
            while not self.stop.wait(poll_s):
                try:
                    self.core.reload()
                except Exception:  # mid-change on disk: the next poll retries
                    pass

        def top(self, q: np.ndarray) -> tuple[int, int]:
            hit = self.core.search(MODEL, q, 1)["results"][0][0]
            return hit["identity"], self.core.snapshot.version

        def close(self) -> None:
            self.stop.set()

    return Replica


def run_impl(impl: str, gallery: Path, replicas: int, poll_s: float, rev: str, new_emb: np.ndarray, new_png: bytes,
             victim: int, victim_q: np.ndarray, gal_v1) -> list[dict]:
    import ray

    Replica = make_replica_class()
    t0 = time.perf_counter()
    reps = [Replica.remote(impl, str(gallery), poll_s, rev) for _ in range(replicas)]
    ray.get([r.top.remote(new_emb) for r in reps])
    load_s = time.perf_counter() - t0
    out = []
    new_identity = 10**9

    def measure(op: str, write, visible) -> None:
        w0, t = wchar(), time.perf_counter()
        write()
        written, write_s = wchar() - w0, time.perf_counter() - t
        while True:
            answers = ray.get([r.top.remote(new_emb if op.startswith("add") else victim_q) for r in reps])
            if all(visible(ident) for ident, _ in answers):
                break
            if time.perf_counter() - t > 600:
                raise RuntimeError(f"{impl} {op}: replicas did not show the change within 600 s: {answers}")
            time.sleep(0.005)
        out.append({"implementation": impl, "operation": op, "bytes_written": written, "write_s": round(write_s, 4),
                    "visible_all_replicas_s": round(time.perf_counter() - t, 4), "replica_start_s": round(load_s, 2)})
        print(out[-1], flush=True)

    if impl == "new":
        from facerec.gallery import add_to_gallery, delete_from_gallery

        measure("add 1 photo", lambda: add_to_gallery(gallery, {MODEL: new_emb}, [new_identity], [new_png]),
                lambda ident: ident == new_identity)
        measure("delete 1 identity", lambda: delete_from_gallery(gallery, identity=victim), lambda ident: ident != victim)
    else:
        measure("add 1 photo", lambda: gal_v1.add_to_gallery(gallery, {MODEL: new_emb}, [new_identity], [new_png]),
                lambda ident: ident == new_identity)
        measure("delete 1 identity", lambda: old_delete_identity(gal_v1, gallery, victim), lambda ident: ident != victim)
    ray.get([r.close.remote() for r in reps])
    for r in reps:
        ray.kill(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--kind", default="kdtree", help="index kind of both galleries")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--poll-s", type=float, default=0.25, help="replicas' manifest poll interval (both implementations)")
    ap.add_argument("--baseline-rev", default="c79b435", help="git revision of the format-1 implementation")
    ap.add_argument("--workdir", default=None, help="where the galleries are written (default: a temp folder)")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench_gallery")
    args = ap.parse_args(argv)
    from facerec.index import INDEXES

    INDEXES.get(args.kind)
    if args.rows < 100 or args.replicas < 1 or args.poll_s <= 0:
        raise SystemExit("--rows >= 100, --replicas >= 1 and --poll-s > 0")

    import tempfile

    import ray

    gal_v1, _ = load_baseline(args.baseline_rev)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gallery-"))
    emb, identities = synthetic(args.rows, args.dim, args.seed)
    tiny = crop_png(1, 8)
    new_png = crop_png(2, 150)  # a served crop (dlib chip size): the same bytes for both
    rng = np.random.default_rng(args.seed + 1)
    new_emb = rng.normal(size=(1, args.dim)).astype(np.float32)
    new_emb /= np.linalg.norm(new_emb)
    victim = int(identities[0])
    victim_rows = np.flatnonzero(identities == victim)
    victim_q = emb[victim_rows[:1]]
    print(f"gallery: {args.rows} rows, {len(np.unique(identities))} identities, {args.dim}-d, {args.kind}; delete identity "
          f"{victim} ({len(victim_rows)} rows, spread over rows {victim_rows.min()}..{victim_rows.max()})", flush=True)
    t = time.perf_counter()
    build_old(gal_v1, work / "v1", emb, identities, args.kind, tiny)
    build_new(work / "v2", emb, identities, args.kind, tiny)
    print(f"built both galleries in {time.perf_counter() - t:.1f} s under {work}", flush=True)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        rows = run_impl("full rewrite (format 1)", work / "v1", args.replicas, args.poll_s, args.baseline_rev, new_emb,
                        new_png, victim, victim_q, gal_v1)
        rows += run_impl("new", work / "v2", args.replicas, args.poll_s, args.baseline_rev, new_emb, new_png, victim,
                         victim_q, gal_v1)
    finally:
        ray.shutdown()
    df = pd.DataFrame(rows)
    df.loc[df["implementation"] == "new", "implementation"] = "segments + tombstones"
    base = df[df["implementation"].str.startswith("full")].set_index("operation")
    df["bytes_vs_full_rewrite"] = [round(base.loc[op, "bytes_written"] / max(b, 1), 1) for op, b in
                                   zip(df["operation"], df["bytes_written"])]
    df["operation"] = [op if op.startswith("add") else f"{op} ({len(victim_rows)} rows)" for op in df["operation"]]
    notes = [
        f"{args.rows:,} rows x {args.dim}-d float32, one model, {args.kind} index, {args.replicas} replicas polling every "
        f"{args.poll_s} s, Ray with {args.num_cpus} CPUs; baseline = facerec/serve/gallery.py + retriever.py at "
        f"{args.baseline_rev} (git), run in the same process and cluster.",
        "bytes_written: write() bytes of the writing process (/proc/self/io wchar), crop included (a 150x150 PNG, "
        f"{len(new_png):,} bytes); the delete also overwrites the deleted rows' records and embeddings in place.",
        "visible_all_replicas_s: from the start of the write until every replica's top-1 search shows the change "
        "(the new photo found; the deleted identity gone). replica_start_s: loading the gallery in all replicas.",
        "bytes_vs_full_rewrite: the baseline's bytes for the same operation / this row's bytes.",
    ]
    write_table(df, args.out, "bench_gallery", "Gallery add/delete at scale: segments + tombstones vs full rewrite", notes)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
