"""Choose the vector index for the retrieval of similar past cases, by measurement.

Embeds real cases (eICU demo and the DDXPlus sample) with all-MiniLM-L6-v2, then for each
library measures build time, single-query latency (k=10), recall@10 against exact search
(numpy inner product on the L2-normalised vectors) and install size, on the real embeddings
and on a larger set (the real embeddings repeated with small Gaussian noise, renormalised) to
see how each scales past a demo-sized institution.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_retrieval.py \
        --out results/retrieval_bench.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

K = 10


def _install_mb(dist: str) -> float:
    files = md.distribution(dist).files or []
    total = 0
    for f in files:
        p = Path(str(f.locate()))
        if p.is_file():
            total += p.stat().st_size
    return total / 2**20


def _faiss_flat(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return lambda q: index.search(q[None, :], K)[1][0]


def _faiss_hnsw(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import faiss

    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(x)
    index.hnsw.efSearch = 64
    return lambda q: index.search(q[None, :], K)[1][0]


def _usearch(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=100)
    index.add(np.arange(len(x)), x)
    index.expansion_search = 64
    return lambda q: np.asarray(index.search(q, K).keys)


def _usearch_exact(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from usearch.index import search

    return lambda q: np.asarray(search(x, q, K, metric="ip", exact=True).keys)


def _hnswlib(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=100, M=32)
    index.add_items(x, np.arange(len(x)), num_threads=1)
    index.set_ef(64)
    return lambda q: index.knn_query(q[None, :], k=K, num_threads=1)[0][0]


def _sqlite_vec(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import sqlite_vec

    db = sqlite3.connect(":memory:")
    if not hasattr(db, "enable_load_extension"):
        # CPython built without --enable-loadable-sqlite-extensions (this venv's is): sqlite-vec
        # cannot be loaded through the standard library at all.
        raise RuntimeError("this Python's sqlite3 cannot load extensions")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    db.execute(
        f"create virtual table v using vec0(embedding float[{x.shape[1]}] distance_metric=cosine)"
    )
    db.executemany(
        "insert into v(rowid, embedding) values (?, ?)",
        ((i, row.astype(np.float32).tobytes()) for i, row in enumerate(x)),
    )
    db.commit()

    def query(q: np.ndarray) -> np.ndarray:
        rows = db.execute(
            "select rowid from v where embedding match ? and k = ? order by distance",
            (q.astype(np.float32).tobytes(), K),
        ).fetchall()
        return np.array([r[0] for r in rows])

    return query


LIBRARIES: dict[str, tuple[str, Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]]] = {
    "faiss-cpu IndexFlatIP (exact)": ("faiss-cpu", _faiss_flat),
    "faiss-cpu HNSW32": ("faiss-cpu", _faiss_hnsw),
    "usearch HNSW (f32)": ("usearch", _usearch),
    "usearch exact": ("usearch", _usearch_exact),
    "hnswlib HNSW32": ("hnswlib", _hnswlib),
    "sqlite-vec vec0 (exact)": ("sqlite-vec", _sqlite_vec),
}


def _embeddings() -> np.ndarray:
    from feddx.data.sources import load_cases
    from feddx.personalize.retrieval import MiniLMEmbedder, case_text

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    cases = load_cases(f"eicu:{shared / 'eicu_demo'}").cases
    cases += load_cases(f"ddxplus:{shared / 'ddxplus'}").cases
    return MiniLMEmbedder().encode([case_text(c) for c in cases])


def _measure(name: str, x: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    dist, build = LIBRARIES[name]
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :K]
    start = time.perf_counter()
    try:
        search = build(x)
    except RuntimeError as e:
        return {
            "library": name,
            "n": len(x),
            "unusable": str(e),
            "install_mb": round(_install_mb(dist), 1),
        }
    build_s = time.perf_counter() - start
    hits, times = 0, []
    for q, truth in zip(queries, exact, strict=True):
        t = time.perf_counter()
        got = search(q)
        times.append(time.perf_counter() - t)
        hits += len(set(int(i) for i in got) & set(int(i) for i in truth))
    return {
        "library": name,
        "n": len(x),
        "build_s": round(build_s, 3),
        "query_ms_mean": round(1000 * float(np.mean(times)), 3),
        "query_ms_p95": round(1000 * float(np.percentile(times, 95)), 3),
        "recall_at_10": round(hits / (K * len(queries)), 4),
        "install_mb": round(_install_mb(dist), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/retrieval_bench.json"))
    ap.add_argument("--large", type=int, default=100_000, help="size of the scaled set")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--embeddings", type=Path, default=None, help="cache of the real embeddings (.npy)"
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.embeddings and args.embeddings.is_file():
        real = np.load(args.embeddings)
    else:
        real = _embeddings().astype(np.float32)
        if args.embeddings:
            np.save(args.embeddings, real)
    reps = -(-args.large // len(real))
    big = np.concatenate([real + rng.normal(0, 0.05, real.shape) for _ in range(reps)])[
        : args.large
    ]
    big = (big / np.linalg.norm(big, axis=1, keepdims=True)).astype(np.float32)
    rows = []
    for label, x in (("real", real), ("scaled", big)):
        idx = rng.choice(len(x), size=min(args.queries, len(x)), replace=False)
        queries = x[idx] + rng.normal(0, 0.02, (len(idx), x.shape[1])).astype(np.float32)
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        for name in LIBRARIES:
            row = {"set": label, **_measure(name, x, queries)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.write_text(json.dumps({"dim": int(real.shape[1]), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
