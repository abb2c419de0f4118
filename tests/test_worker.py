"""The batch worker against real files, the real tiny model and both real stores."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from clipwatch.batcher import DecodeSizer
from clipwatch.changes import Change
from clipwatch.config import Config
from clipwatch.embedder import Embedder
from clipwatch.metrics import Metrics
from conftest import Harness, vector_at, wait_until, write_image


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


def test_decode_workers_follow_the_measured_costs_of_the_model_and_of_the_files_arriving():
    """model.decode_workers = 0 on 2 cores: k = ceil(C d / (m + d)) files decode at once, following the mix."""
    metrics = Metrics(CollectorRegistry())
    sizer = DecodeSizer(cores=2, fixed=0, gpu=False, model_threads=2, metrics=metrics)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("clipwatch_decode_workers")

    assert (sizer.limit, sizer.capacity, gauge()) == (1, 2, 1)  # one per two cores until measured
    sizer.embedded(0.256, 32)  # a fast model: 16 core-ms per image (bf16 on an AMX CPU)
    sizer.decoded([0.035] * 32)  # 12 MP photos: 35 ms each
    assert (sizer.limit, gauge()) == (2, 2)  # the model alone would wait for one decode thread
    for _ in range(20):  # the mix turns to web-size JPEGs: 6 ms each
        sizer.decoded([0.006] * 32)
    assert (sizer.limit, gauge()) == (1, 1)
    contended = DecodeSizer(cores=2, fixed=0, gpu=False, model_threads=2, metrics=Metrics(CollectorRegistry()))
    contended.embedded(1.2, 32, decode_cpu=0.4)  # the decode threads took 0.4 s of the model's 2.4 core-s
    assert contended.model_s == pytest.approx(2.0 / 32)
    slow = DecodeSizer(cores=2, fixed=0, gpu=False, model_threads=2, metrics=Metrics(CollectorRegistry()))
    slow.embedded(2.4, 32)  # fp32 on the CPU: 150 core-ms per image
    slow.decoded([0.035] * 32)
    assert slow.limit == 1  # the cores are the model's: a second decode thread would only take from it
    fixed = DecodeSizer(cores=2, fixed=3, gpu=False, model_threads=2, metrics=Metrics(CollectorRegistry()))
    fixed.embedded(0.256, 32)
    fixed.decoded([0.006] * 32)
    assert (fixed.limit, fixed.capacity) == (3, 3)  # model.decode_workers = 3 is kept
    gpu = DecodeSizer(cores=2, fixed=0, gpu=True, model_threads=2, metrics=Metrics(CollectorRegistry()))
    gpu.decoded([0.035] * 32)
    assert gpu.limit == 2  # the model takes no cores: all of them decode


def two_files_decoding(sizer: DecodeSizer) -> tuple[list[str], threading.Event, list[threading.Thread]]:
    """Two decode threads asking `sizer` for a slot; each holds it until `release` is set. Returns once the
    first is inside (the sizer starts at one per two cores)."""
    inside: list[str] = []
    release = threading.Event()

    def decode(name: str) -> None:
        with sizer.slot():
            inside.append(name)
            release.wait(10)

    threads = [threading.Thread(target=decode, args=(n,), daemon=True) for n in "ab"]
    for t in threads:
        t.start()
    wait_until(lambda: len(inside) == 1, what="one file decoding")
    return inside, release, threads


def test_no_more_files_decode_at_once_than_the_sizer_allows_and_a_raise_lets_them_in():
    sizer = DecodeSizer(cores=2, fixed=0, gpu=False, model_threads=2, metrics=Metrics(CollectorRegistry()))
    inside, release, threads = two_files_decoding(sizer)
    time.sleep(0.2)  # the second must still be waiting: nothing changes the limit meanwhile
    assert len(inside) == 1
    sizer.embedded(0.256, 32)
    sizer.decoded([0.035] * 32)  # the measured costs now call for two
    wait_until(lambda: len(inside) == 2, what="the second file let in")
    release.set()
    for t in threads:
        t.join(5)


def test_each_loaded_file_carries_its_decode_cpu_time_and_the_gauge_is_exported(harness: Harness):
    files = [write_image(harness.root / f"img{i:02}.jpg", seed=i, size=(640, 480)) for i in range(4)]
    loaded = [harness.worker.batcher.load(str(f)) for f in files]
    assert all(f.cpu_s > 0 and f.pixels is not None for f in loaded)
    harness.upsert(*files)
    sizer = harness.worker.batcher.sizer
    assert sizer.decode_s is not None and sizer.model_s is not None  # measured from the batch just ingested
    assert harness.metrics.registry.get_sample_value("clipwatch_decode_workers") == sizer.limit


def test_while_the_model_waits_for_pixels_every_thread_of_the_pool_decodes():
    sizer = DecodeSizer(cores=2, fixed=0, gpu=False, model_threads=2, metrics=Metrics(CollectorRegistry()))
    inside, release, threads = two_files_decoding(sizer)
    with sizer.model_idle():  # the model has nothing to embed: its cores decode
        wait_until(lambda: len(inside) == 2, what="the second file let in while the model waits")
        release.set()
    for t in threads:
        t.join(5)
