"""The batch worker against real files, the real tiny model and both real stores."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from clipwatch.changes import Change
from clipwatch.config import Config
from clipwatch.embedder import Embedder
from conftest import Harness, vector_at, write_image


@pytest.fixture
def harness(store_url: str, make_config: Callable[..., Config], embedder: Embedder) -> Iterator[Harness]:
    h = Harness(make_config(store_url, model__batch_size=16), embedder)
    yield h
    h.service.close()


def test_fifty_images_take_a_handful_of_model_calls(harness: Harness):
    files = [write_image(harness.root / f"img{i:02}.jpg", seed=i) for i in range(50)]
    harness.upsert(*files)
    assert len(harness.rows()) == 50
    assert harness.embedder.calls == [16, 16, 16, 2]  # batch_size = 16: one forward pass per batch


def test_the_next_batch_is_decoded_while_the_model_embeds_this_one(harness: Harness,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """The pipeline: files of batch 2 are read and decoded before batch 1's forward pass has ended."""
    events: list[tuple[str, float, str]] = []
    real_load, real_embed = harness.worker.batcher.load, harness.embedder.embed_images

    def load(path: str):  # type: ignore[no-untyped-def]
        events.append(("load", time.monotonic(), path))
        return real_load(path)

    def slow_embed(images):  # type: ignore[no-untyped-def]
        vectors = real_embed(images)
        time.sleep(1.0)  # a model slower than decoding, as the real one is: widens the window observed
        events.append(("embedded", time.monotonic(), str(len(images))))
        return vectors

    monkeypatch.setattr(harness.worker.batcher, "load", load)
    monkeypatch.setattr(harness.embedder, "embed_images", slow_embed)
    files = [write_image(harness.root / f"p{i:02}.jpg", seed=i) for i in range(32)]
    harness.upsert(*files)
    assert len(harness.rows()) == 32
    first_embed_done = next(t for kind, t, _ in events if kind == "embedded")
    second_batch = {str(f) for f in files[16:]}
    loads_of_second = [t for kind, t, path in events if kind == "load" and path in second_batch]
    assert len(loads_of_second) == 16 and min(loads_of_second) < first_embed_done
    m = harness.metrics.registry
    assert m.get_sample_value("clipwatch_batch_fill_ratio_sum") == 2.0  # two full batches of 16
    assert m.get_sample_value("clipwatch_queue_wait_seconds_count") == 32
    assert (m.get_sample_value("clipwatch_stage_duration_seconds_sum", {"stage": "decode"}) or 0) > 0


def test_rows_hold_sha256_unit_vectors_and_the_model(harness: Harness):
    path = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(path)
    row = harness.rows()[str(path)]
    assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (row.size, row.mtime, row.model) == (path.stat().st_size, path.stat().st_mtime, "tiny-clip")
    vec = vector_at(harness.store, str(path))
    assert vec.shape == (512,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert np.allclose(vec, harness.embedder.embed_images([_rgb(path)])[0], atol=1e-5)


def _rgb(path: Path):  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_unchanged_content_is_not_embedded_again(harness: Harness):
    path = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(path)
    os.utime(path, (1_600_000_000, 1_600_000_000))  # touched, same bytes
    harness.upsert(path)
    assert harness.embedder.calls == [1]
    assert harness.rows()[str(path)].mtime == 1_600_000_000


def test_new_content_is_re_embedded_in_place(harness: Harness):
    path = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(path)
    before = harness.rows()[str(path)]
    old_vector = vector_at(harness.store, str(path))
    write_image(path, seed=2)
    harness.upsert(path)
    after = harness.rows()[str(path)]
    assert after.id == before.id and after.sha256 != before.sha256
    assert not np.allclose(vector_at(harness.store, str(path)), old_vector)


def test_move_keeps_the_row_and_its_vector_without_embedding(harness: Harness):
    src = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(src)
    before, vector = harness.rows()[str(src)], vector_at(harness.store, str(src))
    (harness.root / "sub").mkdir()
    dest = harness.root / "sub" / "b.jpg"
    src.rename(dest)
    harness.feed(Change("move", str(src), str(dest)))
    rows = harness.rows()
    assert list(rows) == [str(dest)] and rows[str(dest)].id == before.id
    assert np.array_equal(vector_at(harness.store, str(dest)), vector)
    assert harness.embedder.calls == [1]


def test_write_then_rename_in_one_batch_lands_under_the_final_name(harness: Harness):
    tmp = write_image(harness.root / "upload.jpg", seed=3)
    final = harness.root / "final.jpg"
    tmp.rename(final)
    harness.feed(Change("upsert", str(tmp)), Change("move", str(tmp), str(final)))
    assert list(harness.rows()) == [str(final)]


def test_delete_removes_the_row_and_keep_leaves_it(harness: Harness, make_config, embedder: Embedder, store_url):
    path = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(path)
    path.unlink()
    keeper = Harness(make_config(store_url, store__on_delete="keep"), embedder)
    keeper.feed(Change("delete", str(path)))
    assert str(path) in keeper.rows()
    keeper.service.close()
    harness.feed(Change("delete", str(path)))
    assert harness.rows() == {}


def test_a_broken_file_fails_alone_and_is_counted(harness: Harness):
    good = [write_image(harness.root / f"ok{i}.jpg", seed=i) for i in range(3)]
    (harness.root / "text.jpg").write_text("this is not a JPEG")
    (harness.root / "empty.png").write_bytes(b"")
    truncated = harness.root / "truncated.jpg"
    truncated.write_bytes(write_image(harness.root / "full.jpg", seed=9).read_bytes()[:300])
    harness.upsert(*good, harness.root / "text.jpg", harness.root / "empty.png", truncated)
    assert sorted(harness.rows()) == sorted(str(p) for p in good)
    errors = harness.metrics.registry.get_sample_value
    assert errors("clipwatch_errors_total", {"stage": "decode", "reason": "not_an_image"}) == 1
    assert errors("clipwatch_errors_total", {"stage": "read", "reason": "empty"}) == 1
    assert errors("clipwatch_errors_total", {"stage": "decode", "reason": "decode_error"}) == 1
    assert harness.embedder.calls == [3]


def test_a_file_gone_before_it_is_read_is_skipped_quietly(harness: Harness):
    harness.upsert(harness.root / "vanished.jpg")
    assert harness.rows() == {}
    assert harness.metrics.processed_count("failed") == 0


def test_rows_of_another_model_are_re_embedded(harness: Harness):
    path = write_image(harness.root / "a.jpg", seed=1)
    harness.upsert(path)
    harness.embedder.identity = "another-model"
    harness.upsert(path)
    assert harness.embedder.calls == [1, 1]
    assert harness.rows()[str(path)].model == "another-model"


def test_the_worker_survives_an_unexpected_error_and_goes_on(harness: Harness):
    # A driver bug cannot be produced on demand, so the store's first write raises one (a stand-in).
    real_apply, calls = harness.store.apply, []

    def apply_once_broken(ops):  # type: ignore[no-untyped-def]
        calls.append(len(ops))
        if len(calls) == 1:
            raise RuntimeError("driver bug")
        return real_apply(ops)

    harness.store.apply = apply_once_broken  # type: ignore[method-assign]
    harness.upsert(write_image(harness.root / "a.jpg", seed=1))
    harness.upsert(write_image(harness.root / "b.jpg", seed=2))
    assert list(harness.rows()) == [str(harness.root / "b.jpg")]
    assert harness.metrics.registry.get_sample_value(
        "clipwatch_errors_total", {"stage": "worker", "reason": "unexpected"}) == 1
