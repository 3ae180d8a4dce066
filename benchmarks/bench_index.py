"""Benchmark the retrieval indexes: exact, kdtree, kdtree_pca, hnsw.

For each gallery size (default 10k, 100k, 1M clustered synthetic 128-d unit vectors, see
facerec.index.synthetic; or ``--embeddings`` real ones) and each kind: build seconds,
single-query latency p50/p99 on ONE core, batch queries/s on one core, recall@10 vs exact,
index memory (bytes of its structures) and the RSS growth over the build. Then the exact
search target check: single-query top-10 over 200k x 128 on one core, p50 <= 10 ms.

Searches run with BLAS/OpenMP pinned to one thread (env vars set before NumPy loads, plus
threadpoolctl) and hnswlib's own pool set to 1. Builds use the library defaults, so hnsw
builds with all cores (reported in the table). The plain KD-tree at 128-d visits most of the
tree and can take ~1 s per query at 1M, so its query count is capped (``--kdtree-queries``,
and ``--time-budget`` seconds per measurement); the ``queries`` column says how many were run.

    python benchmarks/bench_index.py                       # 10k, 100k, 1M + 200k check
    python benchmarks/bench_index.py --sizes 10000 --queries 50
    python benchmarks/bench_index.py --embeddings emb.parquet --sizes 0
"""

from __future__ import annotations

import os

# One core for every BLAS/OpenMP pool; must happen before NumPy/sklearn are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import gc
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from facerec.errors import ConfigError, DataNotFoundError
from facerec.index import build_index
from facerec.index.synthetic import clustered_embeddings
from facerec.io import atomic_write_text

KINDS = ("exact", "kdtree", "kdtree_pca", "hnsw")
EXACT_TARGET_MS = 10.0


@dataclass
class BenchConfig:
    sizes: list[int]
    queries: int = 200
    batch_queries: int = 1000
    k: int = 10
    dim: int = 128
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    kdtree_queries: int = 20
    kdtree_queries_from: int = 500_000
    time_budget: float = 60.0
    exact_check_size: int = 200_000
    embeddings: str | None = None
    out: str = "results/bench_index"
    seed: int = 0

    def __post_init__(self) -> None:
        for n in self.sizes:
            if n < 0 or (0 < n < self.k):
                raise ConfigError("sizes", n, f"gallery sizes >= k={self.k} (0 skips the synthetic sizes)")
        if self.queries < 1 or self.batch_queries < 1:
            raise ConfigError("queries", (self.queries, self.batch_queries), "positive query counts")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError("kinds", bad, f"a subset of {list(KINDS)}")
        if self.embeddings is not None and not Path(self.embeddings).is_file():
            raise DataNotFoundError(f"--embeddings {self.embeddings} not found (a .npy (n, d) array or a Parquet with an 'embedding' column)")
        if not self.sizes and self.embeddings is None:
            raise ConfigError("sizes", self.sizes, "at least one size, or --embeddings")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_embeddings(path: str) -> np.ndarray:
    p = Path(path)
    if p.suffix == ".npy":
        x = np.load(p, allow_pickle=False)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "embedding" not in table.column_names:
            raise ConfigError("embeddings", str(p), f"a Parquet with an 'embedding' list column (found {table.column_names})")
        x = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    if x.ndim != 2:
        raise ConfigError("embeddings", f"array of shape {x.shape}", "a 2-D (n, d) array")
    return np.ascontiguousarray(x, dtype=np.float32)


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    """Share of the exact top-k ids that were returned (ties broken differently count as misses)."""
    return float(np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(got, ref)]))


def tie_recall(got: np.ndarray, ref: np.ndarray, gallery: np.ndarray, queries: np.ndarray, rel: float = 1e-4) -> float:
    """Distance-based recall (as in ANN-Benchmarks): a returned neighbour counts when it is no
    farther than the exact k-th neighbour (relative tolerance ``rel``). Id recall undercounts
    on real embeddings with many equidistant neighbours (duplicates, a collapsed model), where
    any of the tied ids is a correct answer. Distances in float64 from the vectors themselves."""
    q = queries[: len(got)].astype(np.float64)[:, None, :]
    d_ref = np.linalg.norm(gallery[ref].astype(np.float64) - q, axis=2)
    d_got = np.linalg.norm(gallery[got].astype(np.float64) - q, axis=2)
    thr = d_ref.max(axis=1, keepdims=True) * (1 + rel) + 1e-12
    return float(np.mean(np.minimum((d_got <= thr).sum(axis=1), ref.shape[1]) / ref.shape[1]))


def time_single(index, queries: np.ndarray, k: int, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-query latency (seconds) and ids, one query per call, stopping after ``budget`` s."""
    lat, ids = [], []
    start = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        _, i = index.search(q[None, :], k)
        lat.append(time.perf_counter() - t)
        ids.append(i[0])
        if time.perf_counter() - start > budget:
            break
    return np.array(lat), np.array(ids)


def bench_gallery(name: str, gallery: np.ndarray, queries: np.ndarray, cfg: BenchConfig, rows: list[dict]) -> None:
    n = gallery.shape[0]
    nq = min(cfg.queries, queries.shape[0])
    nb = min(cfg.batch_queries, queries.shape[0])
    ref_ids = None
    kinds = ["exact"] + [k for k in cfg.kinds if k != "exact"]  # exact first: the recall reference
    for kind in kinds:
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        index = build_index(kind, gallery)
        build_s = time.perf_counter() - t0
        rss_delta = rss_bytes() - rss0
        index.set_num_threads(1)
        slow = kind == "kdtree" and n >= cfg.kdtree_queries_from
        q_single = queries[: min(nq, cfg.kdtree_queries) if slow else nq]
        q_batch = queries[: min(nb, cfg.kdtree_queries) if slow else nb]
        with threadpool_limits(1):
            lat, single_ids = time_single(index, q_single, cfg.k, cfg.time_budget)
            t0 = time.perf_counter()
            _, batch_ids = index.search(q_batch, cfg.k)
            batch_s = time.perf_counter() - t0
            cert = None
            if kind == "kdtree_pca":
                cert = float(index.search_certified(q_batch[:nq], cfg.k)[2].mean())
        if kind == "exact":
            ref_ids = batch_ids
        rec = recall(batch_ids, ref_ids[: len(batch_ids)])
        rec_ties = tie_recall(batch_ids, ref_ids[: len(batch_ids)], gallery, q_batch)
        row = {
            "gallery": name,
            "n": n,
            "kind": kind,
            "params": ", ".join(f"{k}={v}" for k, v in vars(index.params).items()),
            "build_s": round(build_s, 2),
            "build_threads": os.cpu_count() if kind == "hnsw" else 1,
            "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
            "single_queries": len(lat),
            "batch_qps": round(len(q_batch) / batch_s, 1),
            "batch_queries": len(q_batch),
            f"recall@{cfg.k}": round(rec, 4),
            f"dist_recall@{cfg.k}": round(rec_ties, 4),
            "certified": None if cert is None else round(cert, 3),
            "index_MB": round(index.nbytes() / 2**20, 1),
            "rss_delta_MB": round(rss_delta / 2**20, 1),
        }
        rows.append(row)
        tqdm.write(
            f"[{name} n={n:>9,}] {kind:<10} build {build_s:8.2f}s  p50 {row['p50_ms']:9.3f} ms  p99 {row['p99_ms']:9.3f} ms "
            f"({len(lat)} q)  batch {row['batch_qps']:9.1f} q/s  recall@{cfg.k} {rec:.4f} (by distance {rec_ties:.4f})  {row['index_MB']:8.1f} MB"
        )
        del index
    gc.collect()


def exact_check(cfg: BenchConfig) -> dict:
    x, _ = clustered_embeddings(cfg.exact_check_size + cfg.queries, dim=cfg.dim, seed=cfg.seed + 7)
    gallery, queries = x[: cfg.exact_check_size], x[cfg.exact_check_size :]
    index = build_index("exact", gallery)
    with threadpool_limits(1):
        index.search(queries[:5], cfg.k)  # warm-up: page in the gallery
        lat, _ = time_single(index, queries, cfg.k, cfg.time_budget)
    p50 = float(np.percentile(lat, 50)) * 1e3
    return {
        "n": cfg.exact_check_size,
        "dim": cfg.dim,
        "queries": len(lat),
        "p50_ms": round(p50, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "target_ms": EXACT_TARGET_MS,
        "pass": p50 <= EXACT_TARGET_MS,
    }


def machine_info() -> dict:
    import hnswlib  # noqa: F401
    import sklearn

    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "load_avg_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def to_markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated synthetic gallery sizes; 0 = none")
    ap.add_argument("--queries", type=int, default=200, help="single-query latency samples per index")
    ap.add_argument("--batch-queries", type=int, default=1000, help="queries in the one batch call (throughput, recall)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--kdtree-queries", type=int, default=20, help="query cap for the plain kdtree on galleries >= --kdtree-queries-from")
    ap.add_argument("--kdtree-queries-from", type=int, default=500_000)
    ap.add_argument("--time-budget", type=float, default=60.0, help="max seconds of single-query timing per index")
    ap.add_argument("--exact-check-size", type=int, default=200_000, help="gallery of the exact p50 check; 0 skips it")
    ap.add_argument("--embeddings", default=None, help="real embeddings: .npy (n, d) or Parquet with an 'embedding' column")
    ap.add_argument("--out", default="results/bench_index")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = BenchConfig(
        sizes=[int(s) for s in args.sizes.split(",") if s.strip() and int(s) > 0],
        queries=args.queries,
        batch_queries=args.batch_queries,
        kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
        kdtree_queries=args.kdtree_queries,
        kdtree_queries_from=args.kdtree_queries_from,
        time_budget=args.time_budget,
        exact_check_size=args.exact_check_size,
        embeddings=args.embeddings,
        out=args.out,
        seed=args.seed,
    )
    info = machine_info()
    print(f"bench_index: {info}", flush=True)
    t_all = time.perf_counter()
    rows: list[dict] = []
    nq_total = max(cfg.queries, cfg.batch_queries)
    for n in tqdm(cfg.sizes, desc="synthetic sizes", disable=len(cfg.sizes) < 2):
        x, _ = clustered_embeddings(n + nq_total, dim=cfg.dim, seed=cfg.seed)
        # Queries are held-out images of gallery identities (a known person's new photo).
        bench_gallery("synthetic", x[:n], x[n:], cfg, rows)
        del x
        gc.collect()
    if cfg.embeddings:
        x = load_embeddings(cfg.embeddings)
        rng = np.random.default_rng(cfg.seed)
        nq = min(nq_total, max(1, x.shape[0] // 10))
        perm = rng.permutation(x.shape[0])
        bench_gallery(Path(cfg.embeddings).name, x[perm[nq:]], x[perm[:nq]], cfg, rows)
    check = exact_check(cfg) if cfg.exact_check_size > 0 else None
    info["load_avg_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    total = time.perf_counter() - t_all

    df = pd.DataFrame(rows)
    table = to_markdown(df)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_index.csv", df.to_csv(index=False))
    md = [
        "# Index benchmark",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/bench_index.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + f"; total {total:.0f} s.",
        "",
        f"Searches on one core (BLAS/OpenMP/hnswlib threads = 1). recall@{cfg.k} is measured on the batch queries "
        f"against exact search by id; dist_recall@{cfg.k} counts a result as correct when it is no farther than the "
        "exact k-th neighbour (ties). `certified` (kdtree_pca): share of queries whose answer the PCA lower bound proves exact. "
        f"The plain kdtree is capped at {cfg.kdtree_queries} queries on galleries >= {cfg.kdtree_queries_from:,} "
        f"(and single-query timing at {cfg.time_budget:.0f} s per index): see `single_queries`/`batch_queries`.",
        "",
        table,
        "",
    ]
    if check:
        md += [
            f"Exact single-query top-{cfg.k} over {check['n']:,} x {check['dim']} on one core: "
            f"p50 {check['p50_ms']} ms, p99 {check['p99_ms']} ms over {check['queries']} queries "
            f"(target <= {EXACT_TARGET_MS} ms: {'PASS' if check['pass'] else 'FAIL'}).",
            "",
        ]
        atomic_write_text(out / "exact_check.csv", pd.DataFrame([check]).to_csv(index=False))
    atomic_write_text(out / "bench_index.md", "\n".join(md))
    print()
    print(table)
    if check:
        print()
        print(md[-2])
    print(f"\nbench_index: {len(rows)} rows in {total:.0f} s -> {out}/bench_index.{{csv,md}}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
