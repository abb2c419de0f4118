"""Completion detection, back-pressure, and the live watcher (inotify and polling) in process."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clipwatch.changes import Change
from clipwatch.config import Config
from clipwatch.embedder import Embedder
from clipwatch.intake import Intake
from clipwatch.metrics import Metrics
from clipwatch.service import Service
from conftest import wait_until, write_image


def test_a_file_is_released_once_its_size_and_mtime_hold_still(tmp_path: Path):
    intake = Intake(capacity=10, settle_s=1.0, metrics=Metrics())
    path = tmp_path / "a.jpg"
    path.write_bytes(b"part one")
    intake.wait_for_settle(str(path))
    assert intake.settle_once(now=100.0) == 0  # first look: remember size and mtime
    path.write_bytes(b"part one, part two")  # still growing
    assert intake.settle_once(now=100.9) == 0
    assert intake.settle_once(now=101.5) == 0  # changed at 100.9: not yet 1 s still
    assert intake.settle_once(now=102.0) == 1
    assert intake.queue.get_nowait() == Change("upsert", str(path))


def test_a_file_being_written_waits_for_its_close(tmp_path: Path):
    intake = Intake(capacity=10, settle_s=0.0, metrics=Metrics())
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    intake.wait_for_close(str(path))
    assert intake.settle_once(now=1e9) == 0  # however long it takes
    intake.ready(Change("upsert", str(path)))
    assert intake.queue.get_nowait().path == str(path)
    assert intake.settle_once(now=2e9) == 0 and intake.queue.empty()  # released once, nothing left waiting


def test_a_file_moved_out_of_sight_is_deleted_later_unless_it_comes_back(tmp_path: Path):
    intake = Intake(capacity=10, settle_s=0.5, metrics=Metrics())
    intake.delete_later("/r/gone.jpg")
    intake.delete_later("/r/back.jpg")
    intake.ready(Change("upsert", "/r/back.jpg"))  # moved back in before the delay ran out
    start = time.monotonic()
    assert intake.settle_once(now=start) == 0
    assert intake.settle_once(now=start + 1.1) == 1
    assert [intake.queue.get_nowait() for _ in range(2)] == [Change("upsert", "/r/back.jpg"),
                                                             Change("delete", "/r/gone.jpg")]


def test_a_full_queue_blocks_the_producer_until_there_is_room():
    intake = Intake(capacity=1, settle_s=0, metrics=Metrics())
    assert intake.put(Change("upsert", "/a"))
    second_done = threading.Event()
    producer = threading.Thread(target=lambda: intake.put(Change("upsert", "/b")) and second_done.set())
    producer.start()
    assert not second_done.wait(0.3)  # blocked, not dropped
    assert intake.queue.get_nowait().path == "/a"
    wait_until(second_done.is_set, timeout=5, what="the blocked put to go through")
    assert intake.queue.get_nowait().path == "/b"
    producer.join()


def test_closing_the_intake_releases_a_blocked_producer():
    intake = Intake(capacity=1, settle_s=0, metrics=Metrics())
    intake.put(Change("upsert", "/a"))
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(intake.put(Change("upsert", "/b"))))
    producer.start()
    intake.close()
    producer.join(5)
    assert results == [False]


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def live(request: pytest.FixtureRequest, make_config: Callable[..., Config], embedder: Embedder,
         tmp_path: Path) -> Iterator[Service]:
    config = make_config(f"sqlite://{tmp_path}/s.sqlite3", watch__polling=str(request.param).lower(),
                         watch__poll_interval_ms=100)
    service = Service(config, embedder=embedder)
    service.open()
    thread = threading.Thread(target=service.run, kwargs={"handle_signals": False})
    thread.start()
    yield service
    service.stop_event.set()
    thread.join(15)
    assert not thread.is_alive()


def stored(service: Service, path: Path) -> str | None:
    from clipwatch.store import open_store

    store = open_store(service.config)
    try:
        row = store.get_many([str(path)]).get(str(path))
        return row.sha256 if row else None
    finally:
        store.close()


def test_live_watcher_embeds_a_slowly_written_file_once_with_its_final_content(live: Service, tmp_path: Path):
    source = write_image(tmp_path / "source.jpg", seed=5).read_bytes()
    target = tmp_path / "watched" / "slow.jpg"
    with open(target, "wb") as f:  # a slow client: chunks with pauses longer than watch.settle_ms
        for i in range(0, len(source), len(source) // 3 + 1):
            f.write(source[i:i + len(source) // 3 + 1])
            f.flush()
            time.sleep(0.3)
    final = hashlib.sha256(source).hexdigest()
    wait_until(lambda: stored(live, target) == final, what="the row of the complete file")
    if live.config.watch.polling:
        return  # polling cannot see a close; partial versions may be embedded and then replaced
    assert live.metrics.processed_count("embedded") == 1


def test_live_watcher_takes_a_file_moved_in_from_outside(live: Service, tmp_path: Path):
    outside = write_image(tmp_path / "elsewhere.jpg", seed=6)
    inside = tmp_path / "watched" / "arrived.jpg"
    outside.rename(inside)
    wait_until(lambda: stored(live, inside), what="the row of the moved-in file")


def test_hitting_the_inotify_limit_falls_back_to_polling(tmp_path: Path, make_config):
    # The kernel's limit cannot be reached safely here (fs.inotify.max_user_watches is machine-wide), so
    # the inotify observer is replaced by one that fails as the kernel does: OSError ENOSPC on start.
    import errno

    from watchdog.observers.inotify import InotifyObserver

    from clipwatch.files import PathFilter
    from clipwatch.watcher import Watcher

    class ExhaustedInotify(InotifyObserver):
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    class LimitedWatcher(Watcher):
        def _make_observer(self, polling: bool):  # type: ignore[no-untyped-def]
            observer = super()._make_observer(polling)
            return observer if polling else ExhaustedInotify()

    config = make_config(f"sqlite://{tmp_path}/s.sqlite3", watch__poll_interval_ms=50, watch__settle_ms=50)
    metrics = Metrics()
    intake = Intake(capacity=10, settle_s=0.05, metrics=metrics)
    paths = PathFilter(config.watch.paths, config.watch.extensions, config.watch.ignore)
    watcher = LimitedWatcher(config.watch, intake, paths, metrics)
    watcher.start()
    try:
        assert watcher.kind == "PollingObserver"
        assert metrics.registry.get_sample_value("clipwatch_errors_total",
                                                 {"stage": "watch", "reason": "inotify_limit"}) == 1
        image = write_image(tmp_path / "watched" / "seen.jpg", seed=1)
        wait_until(lambda: intake.settle_once() or not intake.queue.empty(), what="the polling observer's event")
        assert intake.queue.get_nowait().path == str(image)
    finally:
        watcher.stop()
