"""The sharded on-disk IVF-PQ index: built shard by shard, merged to disk, searched memory-mapped."""

from __future__ import annotations

import numpy as np
import pytest

from agent_cir.index.sharded import (
    ShardedIndex,
    ShardedIndexError,
    build_sharded,
    exact_search_streaming,
    recall_at_k,
)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    # OpenMP threads spin-wait; on a loaded 2-core machine a tiny training then takes minutes instead of ms
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    vectors = _clustered(6000, 32, seed=0)
    return [vectors[:2500], vectors[2500:4000], vectors[4000:]], _clustered(50, 32, seed=1)


def test_exact_streaming_equals_brute_force(data):
    shards, queries = data
    everything = np.concatenate(shards)
    brute = np.argsort(-(queries @ everything.T), axis=1, kind="stable")[:, :10]
    _, streamed = exact_search_streaming(shards, queries, 10, block=700)  # blocks cut across shards
    assert recall_at_k(streamed, brute) == 1.0


def test_build_merge_search_and_refine(tmp_path, data):
    shards, queries = data
    build = build_sharded(shards, tmp_path / "idx", factory="IVF16,PQ8", train_size=2000)
    assert build.count == 6000 and build.shards == 3 and build.shards_reused == 0
    # the inverted lists hold exactly 8 code bytes + 8 id bytes per vector; the header adds a fixed cost
    assert (tmp_path / "idx" / "merged.ivfdata").stat().st_size == 6000 * (8 + 8)
    assert build.bytes_on_disk > 6000 * 16
    _, truth = exact_search_streaming(shards, queries, 10)

    index = ShardedIndex(tmp_path / "idx", exact_shards=shards)
    assert len(index) == 6000
    index.set_nprobe(16)  # every list: the only loss left is the PQ approximation
    _, coarse = index.search(queries, 10)
    _, refined = index.search(queries, 10, refine=200)
    assert set(np.unique(coarse)) <= set(range(6000))
    assert recall_at_k(refined, truth) >= 0.99  # exact re-scoring of a 200-long short list
    assert recall_at_k(refined, truth) > recall_at_k(coarse, truth)


def test_rebuild_reuses_finished_shards(tmp_path, data):
    shards, _ = data
    build_sharded(shards, tmp_path / "idx", factory="IVF16,PQ8", train_size=2000)
    (tmp_path / "idx" / "shards" / "00001.index").unlink()  # as if the run died before shard 1 was written
    again = build_sharded(shards, tmp_path / "idx", factory="IVF16,PQ8", train_size=2000)
    assert again.shards_reused == 2 and again.count == 6000
    assert len(ShardedIndex(tmp_path / "idx")) == 6000


def test_refine_without_vectors_and_missing_index_are_clear_errors(tmp_path, data):
    shards, queries = data
    with pytest.raises(ShardedIndexError, match="build it first"):
        ShardedIndex(tmp_path / "nothing")
    build_sharded(shards, tmp_path / "idx", factory="IVF16,PQ8", train_size=2000)
    with pytest.raises(ShardedIndexError, match="exact vectors"):
        ShardedIndex(tmp_path / "idx").search(queries, 5, refine=50)
    with pytest.raises(ShardedIndexError, match="not an IVF"):
        build_sharded(shards, tmp_path / "flat", factory="Flat")


def test_damaged_files_are_clear_errors(tmp_path, data):
    shards, _ = data
    build_sharded(shards, tmp_path / "idx", factory="IVF16,PQ8", train_size=2000)
    meta = tmp_path / "idx" / "sharded.json"
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(ShardedIndexError, match="sharded.json is damaged"):
        ShardedIndex(tmp_path / "idx")
    meta.write_text(good)
    (tmp_path / "idx" / "merged.index").write_bytes(b"garbage")
    with pytest.raises(ShardedIndexError, match="cannot be read"):
        ShardedIndex(tmp_path / "idx")
