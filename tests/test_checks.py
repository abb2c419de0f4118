"""Duplicate and prohibited verdicts, actions and the index, on the real tiny model and both stores."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipwatch.changes import Change
from clipwatch.config import Config
from clipwatch.decisions import Decisions
from clipwatch.embedder import Embedder
from clipwatch.health import Health
from clipwatch.index import VectorIndex
from clipwatch.judge import Evidence, Judge, Verdict
from clipwatch.metrics import Metrics
from clipwatch.planner import Entry
from clipwatch.references import References
from clipwatch.store import Delete, Upsert, open_store
from clipwatch.sync import IndexSync, load_index
from conftest import Harness, vector_at, write_image


def row(h: Harness, path: Path):  # type: ignore[no-untyped-def]
    return h.store.get_many([str(path)]).get(str(path))


def verdict_of(h: Harness, path: Path) -> tuple[str, int | None, float | None, str | None]:
    store = h.store
    rows = store._fetch(f"SELECT status, match_id, score, label FROM {store.t} WHERE id = {store.PARAM}",  # type: ignore[attr-defined]  # noqa: S608
                        [row(h, path).id])
    status, match_id, score, label = rows[0]
    return status, match_id, score, label


def test_an_exact_copy_is_a_duplicate_of_the_original_without_a_model_call(make_harness):
    h = make_harness()
    original = write_image(h.root / "original.jpg", seed=1)
    h.upsert(original)
    copy = h.root / "copy under another name.jpg"
    copy.write_bytes(original.read_bytes())
    h.upsert(copy)
    assert h.embedder.calls == [1]  # the copy reused the stored vector
    assert verdict_of(h, copy) == ("duplicate", row(h, original).id, 1.0, None)
    assert np.array_equal(vector_at(h.store, str(copy)), vector_at(h.store, str(original)))


def test_two_identical_files_in_one_batch(make_harness):
    h = make_harness()
    first = write_image(h.root / "a.jpg", seed=1)
    second = h.root / "b.jpg"
    second.write_bytes(first.read_bytes())
    h.upsert(first, second)
    assert h.embedder.calls == [1]  # one image in the forward pass
    assert verdict_of(h, first)[0] == "ok"
    assert verdict_of(h, second) == ("duplicate", row(h, first).id, 1.0, None)


def test_a_resized_reencoded_copy_is_a_near_duplicate_and_a_different_image_is_not(make_harness):
    h = make_harness()
    original = write_image(h.root / "photo.jpg", seed=1, size=(96, 72))
    h.upsert(original)
    resized = h.root / "photo-small.png"
    Image.open(original).resize((64, 48)).save(resized)
    other = write_image(h.root / "other.jpg", seed=2, size=(96, 72))
    h.upsert(resized, other)
    status, match_id, score, _ = verdict_of(h, resized)
    assert (status, match_id) == ("duplicate", row(h, original).id) and 0.97 <= score < 1.0
    assert verdict_of(h, other)[0] == "ok"
    best = h.metrics.registry.get_sample_value("clipwatch_best_match_similarity_count")
    assert best == 2  # one observation per image judged against a non-empty index


def test_near_duplicates_in_one_batch_point_at_the_earlier_image(make_harness):
    h = make_harness()
    first = write_image(h.root / "a.jpg", seed=5, size=(96, 72))
    second = h.root / "b.png"
    Image.open(first).resize((80, 60)).save(second)
    h.upsert(first, second)
    status, match_id, score, _ = verdict_of(h, second)
    assert (status, match_id) == ("duplicate", row(h, first).id) and score >= 0.97


@pytest.mark.parametrize("action", ["quarantine", "reject"])
def test_quarantine_and_reject_move_the_file_and_keep_or_skip_the_row(make_harness, action: str, tmp_path: Path):
    h = make_harness(duplicates__action=action, quarantine__dir=str(tmp_path / "q"))
    original = write_image(h.root / "a.jpg", seed=1)
    h.upsert(original)
    (h.root / "sub").mkdir()
    copy = h.root / "sub" / "copy.jpg"
    copy.write_bytes(original.read_bytes())
    h.upsert(copy)
    moved = tmp_path / "q" / "sub" / "copy.jpg"  # its path below the root is kept
    assert not copy.exists() and moved.read_bytes() == original.read_bytes()
    stored = h.store.get_many([str(copy), str(moved)])
    if action == "quarantine":
        assert list(stored) == [str(moved)] and verdict_of(h, moved)[0] == "duplicate"
    else:
        assert stored == {}
    assert h.metrics.registry.get_sample_value("clipwatch_verdicts_total",
                                               {"kind": "duplicate", "action": action, "signal": "sha256"}) == 1


def test_a_second_copy_in_quarantine_gets_a_new_name_never_overwrites(make_harness, tmp_path: Path):
    h = make_harness(duplicates__action="reject", quarantine__dir=str(tmp_path / "q"))
    original = write_image(h.root / "a.jpg", seed=1)
    h.upsert(original)
    for _ in range(2):
        (h.root / "copy.jpg").write_bytes(original.read_bytes())
        h.upsert(h.root / "copy.jpg")
    assert sorted(os.listdir(tmp_path / "q")) == ["copy.1.jpg", "copy.jpg"]


def test_prohibited_by_reference_image_is_quarantined_with_its_label(make_harness, tmp_path: Path):
    refs = tmp_path / "refs"
    (refs / "weapons").mkdir(parents=True)
    knife = write_image(refs / "weapons" / "knife-01.jpg", seed=7, size=(96, 72))
    write_image(refs / "logo-acme.png", seed=8, fmt="PNG")
    h = make_harness(prohibited__reference_dir=str(refs), quarantine__dir=str(tmp_path / "q"))
    upload = h.root / "innocent.png"
    Image.open(knife).resize((80, 60)).save(upload)
    h.upsert(upload)
    moved = tmp_path / "q" / "innocent.png"
    assert not upload.exists() and moved.exists()
    status, _, score, label = verdict_of(h, moved)
    assert (status, label) == ("prohibited", "weapons") and score >= 0.9
    h.upsert(write_image(h.root / "fine.jpg", seed=9))
    assert verdict_of(h, h.root / "fine.jpg")[0] == "ok"


def test_prohibited_wins_over_duplicate(make_harness, tmp_path: Path):
    refs = tmp_path / "refs"
    refs.mkdir()
    h0 = make_harness()
    stored = write_image(h0.root / "stored.jpg", seed=3)
    h0.upsert(stored)
    (refs / "banned.jpg").write_bytes(stored.read_bytes())
    h = make_harness(prohibited__reference_dir=str(refs), prohibited__action="flag")
    copy = h.root / "copy.jpg"
    copy.write_bytes(stored.read_bytes())
    h.upsert(copy)
    assert verdict_of(h, copy)[0::3] == ("prohibited", "banned")


def test_reference_embeddings_are_cached_and_refreshed_when_the_directory_changes(make_harness, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    write_image(refs / "one.jpg", seed=1)
    h = make_harness(prohibited__reference_dir=str(refs))
    references = h.service.references
    assert len(references) == 1 and references.cache_path.exists()
    calls = len(h.embedder.calls)
    assert references.refresh() is False  # nothing changed: nothing embedded
    write_image(refs / "two.jpg", seed=2)
    assert references.refresh() is True and len(references) == 2
    assert len(h.embedder.calls) == calls + 1  # only the new image; the first came from the cache


def _boundary_checker(embedder: Embedder, config: Config, stored: np.ndarray, prompt_threshold: float) -> Judge:
    index = VectorIndex(embedder.dimension)
    index.upsert([1], stored[None, :])
    refs = References(config, embedder)
    refs.load()
    return Judge(config, "m", index, refs, Decisions())


def _judge(judge: Judge, query: np.ndarray) -> Verdict:
    entry = Entry(key=0, path="/upload/q.jpg", sha256="f" * 64, size=1, mtime=0.0, model="m", vector=query)
    return judge.judge([entry], Evidence(), lambda ids: {})[0]


def test_thresholds_are_inclusive_exactly_at_the_boundary(make_config, embedder: Embedder, tmp_path: Path):
    rng = np.random.default_rng(0)
    stored, query = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 512)).astype(np.float32))
    dup_score = float(stored @ query)  # the very expression the checker computes
    prompt = "a photo of a forbidden thing"
    text_score = float(embedder.embed_texts([prompt])[0] @ query)
    url = f"sqlite://{tmp_path}/b.sqlite3"
    at = make_config(url, duplicates__threshold=dup_score, prohibited__prompts=f'["{prompt}"]',
                     prohibited__text_threshold=text_score)
    judged = _judge(_boundary_checker(embedder, at, stored, text_score), query)
    assert (judged.status, judged.label, judged.score) == ("prohibited", prompt, text_score)
    just_above = float(np.nextafter(np.float32(text_score), np.float32(2)))
    above = make_config(url, duplicates__threshold=dup_score, prohibited__prompts=f'["{prompt}"]',
                        prohibited__text_threshold=just_above)
    judged = _judge(_boundary_checker(embedder, above, stored, just_above), query)
    assert (judged.status, judged.match_id, judged.score) == ("duplicate", 1, dup_score)
    dup_above = float(np.nextafter(np.float32(dup_score), np.float32(2)))
    none = make_config(url, duplicates__threshold=dup_above, prohibited__prompts=f'["{prompt}"]',
                       prohibited__text_threshold=just_above)
    assert _judge(_boundary_checker(embedder, none, stored, just_above), query).status == "ok"


def test_the_index_sync_sees_other_instances_rows_and_deletions(store_url: str, make_config, table: str):
    a = open_store(make_config(store_url, store__instance="a"))
    b = open_store(make_config(store_url, store__instance="b"))
    try:
        for s in (a, b):
            s.init_schema(512)
        vec = np.eye(512, dtype=np.float32)
        a.apply([Upsert("/a/1.jpg", "1" * 64, 1, 1.0, "m", vec[0])])
        index, since = load_index(a, "m", 512)
        assert len(index) == 1
        references = References(make_config(store_url), Embedder("unused"))
        metrics = Metrics()
        sync = IndexSync(a, index, "m", since, 1.0, references, 60.0, metrics, Health(metrics, 1.0), Decisions())
        applied = b.apply([Upsert("/b/2.jpg", "2" * 64, 1, 1.0, "m", vec[1]),
                           Upsert("/b/3.jpg", "3" * 64, 1, 1.0, "other-model", vec[2])])
        sync.sync_once()
        assert len(index) == 2 and np.array_equal(index.get(applied.ids["/b/2.jpg"]), vec[1])
        b.apply([Delete("/b/2.jpg")])
        sync.sync_once()
        assert len(index) == 1 and index.search(vec[0], 1) == [(1, 1.0)]
        assert sync.since <= b.now() - timedelta(seconds=5)  # each round re-reads a safety window
    finally:
        a.close()
        b.close()


def test_index_search_ranks_like_numpy():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(64, capacity=8)  # grows as rows come
    index.upsert(range(100, 400), vectors)
    index.remove([100, 150, 399])
    keep = [i for i in range(300) if i + 100 not in (100, 150, 399)]
    query = vectors[7]
    expected = sorted(((i + 100, float(vectors[i] @ query)) for i in keep), key=lambda x: -x[1])[:10]
    got = index.search(query, 10)
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    assert len(index) == 297 and index.get(150) is None


def test_a_batch_of_queries_gets_what_one_query_at_a_time_gets(monkeypatch: pytest.MonkeyPatch):
    import clipwatch.index

    monkeypatch.setattr(clipwatch.index, "BLOCK_ROWS", 64)  # several blocks, so the running top-k is exercised
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(32)
    index.upsert(range(1, 501), vectors)
    queries = vectors[[3, 250, 499]] + 0.1 * rng.standard_normal((3, 32)).astype(np.float32)
    batched = index.search_many(queries, 5)
    for query, hits in zip(queries, batched, strict=True):
        scores = vectors @ query
        expected = [int(i) + 1 for i in np.argsort(-scores)[:5]]
        assert [i for i, _ in hits] == expected == [i for i, _ in index.search(query, 5)]
    assert [hits[0][0] for hits in batched] == [4, 251, 500]


def _clustered(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    v = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_the_approximate_index_finds_near_copies_and_follows_changes():
    rng = np.random.default_rng(3)
    vectors = _clustered(rng, 6000)
    index = VectorIndex(64, approximate_above=5000, nprobe=8)
    index.upsert(range(1, 4001), vectors[:4000])
    assert not index.approximate  # below the threshold: exact
    index.upsert(range(4001, 6001), vectors[4000:])
    # changes while the background build runs are caught up at its end
    index.remove([10, 20])
    index.upsert([30], vectors[5999:6000])
    assert index.wait_until_approximate(timeout=60), "the approximate index was not built"
    probe = [5, 777, 3333, 5998]
    near = vectors[probe] + 0.02 * rng.standard_normal((4, 64)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    hits = [h[0] for h in index.search_many(near, 1)]
    assert [h[0] for h in hits] == [i + 1 for i in probe]
    assert all(abs(h[1] - float(near[j] @ vectors[probe[j]])) < 1e-5 for j, h in enumerate(hits))  # exact
    # after the build: removed rows are never answered, new and replaced rows are found
    index.remove([6])
    assert index.search(vectors[5], 1)[0][0] != 6
    assert index.search(vectors[9], 1)[0][0] != 10 and index.search(vectors[19], 1)[0][0] != 20
    fresh = _clustered(rng, 1)
    index.upsert([7000], fresh)
    index.upsert([777 + 1], fresh)  # row 778 now holds the same vector
    assert {index.search(fresh[0], 1)[0][0]} <= {7000, 778}
    assert index.search(fresh[0], 2)[1][1] > 0.9999
    assert index.get(30) is not None and np.allclose(index.get(30), vectors[5999])  # type: ignore[arg-type]


def test_a_change_back_to_the_original_content_is_judged_again(make_harness):
    h = make_harness()
    a = write_image(h.root / "a.jpg", seed=1)
    b = write_image(h.root / "b.jpg", seed=2)
    h.upsert(a, b)
    b.write_bytes(a.read_bytes())  # b now holds a's bytes
    h.feed(Change("upsert", str(b)))
    assert verdict_of(h, b) == ("duplicate", row(h, a).id, 1.0, None)


def test_prohibited_by_prompt_at_ingest_is_labelled_with_the_prompt(make_harness, embedder: Embedder):
    # The tiny random model's text-to-image similarities mean nothing, so the threshold is set to -1: every
    # image matches; what is under test is the flow from prompt to status, label and score.
    prompts = ["a photo of a weapon", "a company logo"]
    h = make_harness(prohibited__prompts=json.dumps(prompts), prohibited__text_threshold=-1.0,
                     prohibited__action="flag")
    upload = write_image(h.root / "upload.jpg", seed=4)
    h.upsert(upload)
    status, _, score, label = verdict_of(h, upload)
    scores = embedder.embed_texts(prompts) @ vector_at(h.store, str(upload))
    assert (status, label) == ("prohibited", prompts[int(np.argmax(scores))])
    assert abs(score - float(scores.max())) < 1e-6
