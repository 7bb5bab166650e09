"""A sharded index searched the way a normal index is: ``agent-cir search -i SHARDED`` and the Python API take
``RetrievalGallery.from_index`` -> ``SearchEngine``, with the item table (ids, hashes) and the encoder record the
build stored; what a sharded index lacks is said plainly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from agent_cir.cli import _register, app
from agent_cir.fusion import normalise
from agent_cir.index.files import read_hash
from agent_cir.index.sharded import ShardedIndexError, build_sharded
from agent_cir.index.sharded_gallery import ShardedGallery
from agent_cir.index.sharded_items import ItemTable, write_items
from agent_cir.retrieval.gallery import RetrievalGallery

_register()
RANDOM_ROWS = 3000


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _pictures(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for number in range(6):
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        path = folder / f"photo_{number}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_open_clip_encoder):
    """6 real pictures (encoded by the tiny CLIP) + 3,000 random unit rows, in 2 memory-mapped .npy shards,
    under IVF4,Flat: every list is probed, so the engine's answer must equal the exact one."""
    root = tmp_path_factory.mktemp("sharded_search")
    images = root / "images"
    pictures = _pictures(images)
    encoder = tiny_open_clip_encoder
    real = normalise(np.asarray(encoder.encode_images([Image.open(p).convert("RGB") for p in pictures]), np.float32))
    rng = np.random.default_rng(0)
    noise = normalise(rng.standard_normal((RANDOM_ROWS, encoder.dim)).astype(np.float32))
    vectors = np.concatenate([real, noise]).astype(np.float32)
    ids = [p.name for p in pictures] + [f"missing/{i:05d}.png" for i in range(RANDOM_ROWS)]
    hashes = [read_hash(p) for p in pictures] + [None] * RANDOM_ROWS
    files = []
    for number, block in enumerate((vectors[:1500], vectors[1500:])):
        path = root / f"shard_{number}.npy"
        np.save(path, block)
        files.append(path)
    shards = [np.load(path, mmap_mode="r") for path in files]
    build_sharded(shards, root / "index", factory="IVF4,Flat", train_size=2000, ids=ids, hashes=hashes,
                  images_dir=images, encoder_info=encoder.info)
    return {"root": root, "folder": root / "index", "vectors": vectors, "ids": ids, "pictures": pictures,
            "encoder": encoder}


def _exact_top(vectors: np.ndarray, query: np.ndarray, k: int, excluded: set[int]) -> list[int]:
    scores = vectors @ query
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))]
    return [i for i in order if i not in excluded][:k]


def test_cli_search_over_a_sharded_index_ranks_like_an_exact_scan_and_excludes_the_reference(sharded, tmp_path):
    reference = tmp_path / "my_reference.png"
    shutil.copy(sharded["pictures"][2], reference)  # same bytes: every gallery copy is excluded
    result = CliRunner().invoke(app, ["search", "-i", str(sharded["folder"]), "--image", str(reference),
                                      "--mode", "image", "-k", "8", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout[result.stdout.index("{"):])
    encoder = sharded["encoder"]
    query = normalise(np.asarray(encoder.encode_images([Image.open(reference).convert("RGB")]), np.float32))[0]
    expected = [sharded["ids"][i] for i in _exact_top(sharded["vectors"], query, 8, excluded={2})]
    got = [row["id"] for row in answer["results"]]
    assert got == expected
    assert "photo_2.png" not in got
    by_id = {row["id"]: row for row in answer["results"]}
    if "photo_0.png" in by_id:  # paths are the images folder + the id
        assert Path(by_id["photo_0.png"]["path"]) == sharded["pictures"][0]
    assert answer["encoder"]["random_weights"] is True


def test_text_search_and_restriction_use_the_exact_rows(sharded):
    gallery = RetrievalGallery.from_index(sharded["folder"])
    assert isinstance(gallery.index, ShardedGallery) and len(gallery) == RANDOM_ROWS + 6
    query = normalise(np.asarray(sharded["encoder"].encode_texts(["a red square"]), np.float32))[0]
    [ranking] = gallery.engine.search(query[None, :], 5)
    assert ranking.head_ids(5) == [sharded["ids"][i] for i in _exact_top(sharded["vectors"], query, 5, set())]
    allowed = [3, 10, 2500, 7]
    [restricted] = gallery.engine.search(query[None, :], 3, restrict=[allowed])
    scores = sharded["vectors"][allowed] @ query
    assert restricted.head_ids(3) == [sharded["ids"][allowed[i]] for i in np.argsort(-scores)[:3]]
    assert gallery.position("photo_4.png") == 4 and gallery.position("nope.png") is None


def test_a_sharded_index_without_ids_or_encoder_is_refused_with_what_is_missing(tmp_path):
    rng = np.random.default_rng(1)
    vectors = normalise(rng.standard_normal((600, 16)).astype(np.float32))
    build_sharded([vectors], tmp_path / "bare", factory="IVF4,Flat", train_size=600)
    with pytest.raises(ShardedIndexError, match="lacks the item ids .* and the encoder record"):
        ShardedGallery(tmp_path / "bare")
    result = CliRunner().invoke(app, ["search", "-i", str(tmp_path / "bare"), "--text", "a cat"])
    assert result.exit_code == 2
    assert "lacks the item ids" in result.output and "Traceback" not in result.output


def test_codes_only_index_searches_but_restriction_says_why_not(tmp_path, tiny_open_clip_encoder):
    rng = np.random.default_rng(2)
    vectors = normalise(rng.standard_normal((600, tiny_open_clip_encoder.dim)).astype(np.float32))
    ids = [f"{i}.png" for i in range(600)]
    build_sharded([vectors], tmp_path / "codes", factory="IVF4,Flat", train_size=600, ids=ids,
                  encoder_info=tiny_open_clip_encoder.info)  # an in-memory array: no exact vectors recorded
    gallery = RetrievalGallery.from_index(tmp_path / "codes")
    [ranking] = gallery.engine.search(vectors[:1], 3)
    assert ranking.head_ids(1) == ["0.png"]
    with pytest.raises(ShardedIndexError, match="keeps no exact vectors"):
        gallery.engine.search(vectors[:1], 3, restrict=[[1, 2]])


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=6), min_size=1, max_size=30, unique=True),
       hash_of=st.lists(st.sampled_from(["", "aa", "bb", "cc"]), min_size=30, max_size=30))
def test_item_table_lookups_equal_a_dict(tmp_path_factory, ids, hash_of):
    folder = tmp_path_factory.mktemp("items")
    hashes = hash_of[: len(ids)]
    write_items(folder, ids, hashes)
    table = ItemTable(folder, None)
    assert list(table.ids) == ids
    for row, gallery_id in enumerate(table.ids):
        assert table.position(gallery_id) == row
    for digest in ("aa", "bb", "cc", "", "zz"):
        expected = [row for row, h in enumerate(hashes) if h == digest and digest]
        assert table.positions_of_hash(digest) == expected


def test_exact_rescoring_recovers_what_the_codes_lose(tmp_path, tiny_open_clip_encoder):
    """With exact vectors recorded, the engine re-scores REFINE_FACTOR x k code candidates exactly: its top-k
    is the exact top-k, where the 4-bit codes alone are not."""
    rng = np.random.default_rng(5)
    dim = tiny_open_clip_encoder.dim
    centres = normalise(rng.standard_normal((20, dim)).astype(np.float32))
    vectors = normalise(centres[rng.integers(0, 20, 4000)] + 0.15 * rng.standard_normal((4000, dim)).astype(np.float32))
    np.save(tmp_path / "v.npy", vectors.astype(np.float32))
    ids = [f"{i}.png" for i in range(4000)]
    build_sharded([np.load(tmp_path / "v.npy", mmap_mode="r")], tmp_path / "pq", factory="IVF4,PQ16x4", train_size=4000,
                  ids=ids, encoder_info=tiny_open_clip_encoder.info)
    queries = normalise(centres[:10] + 0.15 * rng.standard_normal((10, dim)).astype(np.float32))
    truth = [set(_exact_top(vectors, q, 10, set())) for q in queries]

    def recall(gallery: RetrievalGallery) -> float:
        found = gallery.engine.search(queries, 10)
        return float(np.mean([len({int(i.split(".")[0]) for i in r.head_ids(10)} & t) / 10
                              for r, t in zip(found, truth)]))

    refined = RetrievalGallery.from_index(ShardedGallery(tmp_path / "pq"))
    codes_only = RetrievalGallery.from_index(ShardedGallery(tmp_path / "pq", refine_factor=None))
    assert "re-scored exactly" in refined.engine.describe()
    assert recall(refined) == 1.0
    assert recall(codes_only) < 1.0


# ---------- agent-cir eval over a prebuilt (sharded) index ----------


@pytest.fixture(scope="module")
def circo_with_indexes(tmp_path_factory, tiny_open_clip_encoder):
    """A 12-image CIRCO split, its plain index and the same vectors as a sharded index (IVF2,Flat, every list
    probed: its answers are the exact ones)."""
    from agent_cir.index import GalleryIndex
    from tests.test_eval_protocols import _mini_circo

    root = tmp_path_factory.mktemp("eval_prebuilt")
    annotations, images_root = _mini_circo(root)
    images = images_root / "unlabeled2017"
    plain = GalleryIndex.build(images, root / "plain_index", tiny_open_clip_encoder, workers=0, progress=False)
    vectors = np.asarray(plain.embeddings, dtype=np.float32)
    np.save(root / "shard_0.npy", vectors[:6])
    np.save(root / "shard_1.npy", vectors[6:])
    shards = [np.load(root / f"shard_{n}.npy", mmap_mode="r") for n in (0, 1)]
    build_sharded(shards, root / "sharded_index", factory="IVF2,Flat", train_size=12, ids=list(plain.ids),
                  hashes=list(plain.hashes), images_dir=images, encoder_info=tiny_open_clip_encoder.info)
    return {"root": root, "annotations": annotations, "images_root": images_root,
            "plain": root / "plain_index", "sharded": root / "sharded_index"}


def _rankings(run: Path) -> dict[str, list[str]]:
    lines = (run / "traces.jsonl").read_text().splitlines()
    return {trace["query_id"]: trace["eval"]["ranking"] for trace in map(json.loads, lines)}


def test_eval_over_a_prebuilt_sharded_index_ranks_as_the_index_eval_builds(circo_with_indexes, tmp_path,
                                                                           tiny_open_clip_encoder):
    from agent_cir.eval.runner import run_eval

    data = circo_with_indexes
    args = dict(annotations=data["annotations"], encoder=tiny_open_clip_encoder, progress=False)
    built = run_eval("circo", "val", data["images_root"], "image_only", tmp_path / "built", **args)
    over_sharded = run_eval("circo", "val", data["images_root"], "image_only", tmp_path / "sharded",
                            prebuilt_index=data["sharded"], **args)
    over_plain = run_eval("circo", "val", data["images_root"], "image_only", tmp_path / "plain",
                          prebuilt_index=data["plain"], **args)
    assert not (tmp_path / "sharded" / "index").exists()  # nothing built
    expected = _rankings(tmp_path / "built")
    assert len(expected) == 3 and all(len(ranking) == 12 for ranking in expected.values())
    assert _rankings(tmp_path / "sharded") == expected == _rankings(tmp_path / "plain")
    assert over_sharded.metrics["metrics"] == built.metrics["metrics"] == over_plain.metrics["metrics"]


def test_eval_refuses_a_prebuilt_index_that_is_not_the_splits_gallery(circo_with_indexes, sharded, tmp_path,
                                                                      tiny_open_clip_encoder):
    from agent_cir.eval.prebuilt_index import PrebuiltIndexError
    from agent_cir.eval.runner import run_eval

    data = circo_with_indexes
    args = dict(annotations=data["annotations"], encoder=tiny_open_clip_encoder, progress=False)
    with pytest.raises(PrebuiltIndexError, match=r"lacks 12 of its 12 gallery images .* holds 3006 items that are "
                                                 r"not in it \(e\.g\. photo_0\.png\)"):
        run_eval("circo", "val", data["images_root"], "image_only", tmp_path / "other", prebuilt_index=sharded["folder"],
                 **args)
    with pytest.raises(PrebuiltIndexError, match="is not a folder"):
        run_eval("circo", "val", data["images_root"], "image_only", tmp_path / "none",
                 prebuilt_index=tmp_path / "no_such_index", **args)


def test_eval_cli_index_needs_images_and_no_index_dir(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--dataset", "circo", "--config", "image_only", "--out",
                                      str(tmp_path / "run"), "--index", str(tmp_path / "idx")])
    assert result.exit_code != 0 and "give --images too" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
