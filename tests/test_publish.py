"""The publish gate (`watch.publish_dir`): a file becomes public only after it passed the checks.

Real files, the real wiring (Harness: `Service.open`, driven batch by batch) or real daemons, on SQLite and
MySQL 9. The file system across which a file is copied is a real tmpfs (/dev/shm), never a stand-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clipwatch.actions import Actions
from clipwatch.changes import Change
from clipwatch.errors import ConfigError
from clipwatch.publish import Census
from clipwatch.store import Store
from clipwatch.vocab import ChangeKind
from clipwatch.web.users import set_user
from conftest import Client, Daemon, Harness, all_verdicts, scrape, wait_until, write_image
from test_quarantine import CRASHES, Crash, files_under

pytestmark = pytest.mark.parametrize("store_url", ["sqlite", "mysql"], indirect=True)


@pytest.fixture
def public(tmp_path: Path) -> Path:
    (tmp_path / "public").mkdir()
    return tmp_path / "public"


@pytest.fixture
def gated(make_harness: Callable[..., Harness], public: Path) -> Callable[..., Harness]:
    return lambda **settings: make_harness(watch__publish_dir=str(public), **settings)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def errors(h: Harness, reason: str) -> float:
    return h.metrics.registry.get_sample_value("clipwatch_errors_total", {"stage": "move", "reason": reason}) or 0.0


def test_a_clean_image_is_published_with_its_row_at_the_published_path(gated: Callable[..., Harness], public: Path):
    h = gated()
    upload = write_image(h.root / "2026" / "cat.jpg", seed=1)
    content, mtime = sha(upload), upload.stat().st_mtime
    h.upsert(upload)
    published = public / "2026" / "cat.jpg"
    assert not upload.exists() and sha(published) == content and published.stat().st_mtime == mtime
    rows = h.verdicts()
    assert list(rows) == [str(published)] and rows[str(published)].status == "ok"
    assert h.metrics.registry.get_sample_value("clipwatch_files_published_total") == 1
    assert h.metrics.registry.get_sample_value("clipwatch_publish_latency_seconds_count") == 1
    assert h.store.pending_moves() == []


def test_a_flagged_duplicate_is_published_and_quarantined_ones_never_are(gated: Callable[..., Harness],
                                                                         public: Path, tmp_path: Path):
    h = gated(quarantine__dir=str(tmp_path / "q"))
    original = write_image(h.root / "a.jpg", seed=2)
    h.upsert(original)
    copy = h.root / "b.jpg"
    shutil.copyfile(public / "a.jpg", copy)
    h.upsert(copy)  # duplicates.action = flag: it passes, flagged
    rows = h.verdicts()
    assert rows[str(public / "b.jpg")][1:3] == ("duplicate", rows[str(public / "a.jpg")].id)
    strict = gated(duplicates__action="quarantine", quarantine__dir=str(tmp_path / "q"))
    again = h.root / "c.jpg"
    shutil.copyfile(public / "a.jpg", again)
    strict.upsert(again)
    assert not (public / "c.jpg").exists() and (tmp_path / "q" / "c.jpg").exists()
    assert strict.verdicts()[str(tmp_path / "q" / "c.jpg")].status == "duplicate"


def test_several_incoming_directories_publish_into_subdirectories_of_their_names(
        make_harness: Callable[..., Harness], public: Path, tmp_path: Path):
    shop, forum = tmp_path / "incoming" / "shop", tmp_path / "incoming" / "forum"
    shop.mkdir(parents=True), forum.mkdir(parents=True)
    h = make_harness(watch__paths=f"{shop},{forum}", watch__publish_dir=str(public))
    a, b = write_image(shop / "x" / "1.jpg", seed=3), write_image(forum / "1.jpg", seed=4)
    h.upsert(a, b)
    assert set(h.verdicts()) == {str(public / "shop" / "x" / "1.jpg"), str(public / "forum" / "1.jpg")}
    other = tmp_path / "elsewhere" / "shop"
    other.mkdir(parents=True)
    with pytest.raises(ConfigError, match="names must differ"):
        make_harness(watch__paths=f"{shop},{other}", watch__publish_dir=str(public))


def test_a_taken_name_is_never_overwritten_and_the_file_waits_until_it_is_free(gated: Callable[..., Harness],
                                                                               public: Path):
    h = gated()
    old = write_image(public / "avatar.jpg", seed=5)
    old_content = sha(old)
    upload = write_image(h.root / "avatar.jpg", seed=6)
    h.upsert(upload)
    assert sha(public / "avatar.jpg") == old_content and upload.exists()  # nothing overwritten, nothing lost
    assert h.verdicts()[str(upload)].status == "ok"  # judged; its row stays with it in incoming
    assert errors(h, "publish_name_taken") == 1
    h.service.scan()  # a rescan does not try it again while the name is taken
    assert upload.exists() and errors(h, "publish_name_taken") == 1
    old.unlink()
    h.service.intake.prune_refused()  # what each rescan does first
    h.service.scan()
    assert not upload.exists() and (public / "avatar.jpg").exists()
    assert set(h.verdicts()) == {str(public / "avatar.jpg")}


def test_a_publish_that_cannot_be_done_keeps_the_file_and_its_row_in_incoming(gated: Callable[..., Harness],
                                                                              public: Path):
    h = gated()
    (public / "album").write_bytes(b"a file where the directory should be")  # root ignores permissions
    upload = write_image(h.root / "album" / "p.jpg", seed=8)
    h.upsert(upload)
    assert upload.exists() and set(h.verdicts()) == {str(upload)} and errors(h, "move_failed") == 1
    (public / "album").unlink()
    h.service.scan()  # every rescan takes the files of incoming again, rows or not
    assert not upload.exists() and set(h.verdicts()) == {str(public / "album" / "p.jpg")}


def test_rows_stored_before_the_gate_was_turned_on_are_published_by_the_first_scan(
        make_harness: Callable[..., Harness], gated: Callable[..., Harness], public: Path):
    before = make_harness()
    upload = write_image(before.root / "old.jpg", seed=9)
    before.upsert(upload)
    old_id = before.verdicts()[str(upload)].id
    h = gated()
    h.service.scan()
    assert not upload.exists() and (public / "old.jpg").exists()
    assert [(path, row.id) for path, row in h.verdicts().items()] == [(str(public / "old.jpg"), old_id)]
    assert h.embedder.calls == []  # its stored vector was reused: the row followed its file, id kept


def test_the_publish_directory_is_reconciled_but_its_files_are_never_moved(gated: Callable[..., Harness],
                                                                           public: Path, tmp_path: Path):
    refs = tmp_path / "refs"
    knife = write_image(refs / "weapons" / "knife.jpg", seed=10)
    h = gated(prohibited__reference_dir=str(refs), quarantine__dir=str(tmp_path / "q"))
    placed = public / "placed.jpg"
    shutil.copyfile(knife, placed)  # put there by other means: judged, flagged, left where it is
    clean = write_image(public / "clean.jpg", seed=11)
    h.service.scan()
    rows = h.verdicts()
    assert (rows[str(placed)].status, rows[str(placed)].label) == ("prohibited", "weapons") and placed.exists()
    assert rows[str(clean)].status == "ok"
    clean.rename(public / "renamed.jpg")
    placed.unlink()
    h.feed(Change(ChangeKind.MOVE, str(clean), str(public / "renamed.jpg")), Change(ChangeKind.DELETE, str(placed)))
    assert set(h.verdicts()) == {str(public / "renamed.jpg")}


def test_a_file_released_from_the_quarantine_goes_back_to_incoming_and_is_published(
        gated: Callable[..., Harness], public: Path, tmp_path: Path):
    refs, q = tmp_path / "refs", tmp_path / "q"
    knife = write_image(refs / "weapons" / "knife.jpg", seed=50)
    h = gated(prohibited__reference_dir=str(refs), quarantine__dir=str(q))
    upload = h.root / "k.jpg"
    shutil.copyfile(knife, upload)
    h.upsert(upload)
    row = h.verdicts()[str(q / "k.jpg")]
    assert row.status == "prohibited" and not (public / "k.jpg").exists()
    Actions(h.store, h.service.paths, str(q), h.service._rejudge).release(row.id, "ana")  # "not prohibited"
    h.service.decisions.refresh(h.store)  # the daemon's sync does this; this harness has no sync thread
    h.feed()
    assert not upload.exists() and not (q / "k.jpg").exists() and (public / "k.jpg").exists()
    assert h.verdicts() == {str(public / "k.jpg"): (row.id, "ok", None, None, None)}


def test_the_census_counts_waiting_and_refused_files_in_incoming(gated: Callable[..., Harness]):
    h = gated()
    broken = h.root / "broken.jpg"
    broken.write_bytes(b"not an image")
    h.upsert(broken)
    waiting = [write_image(h.root / "later" / f"{i}.jpg", seed=30 + i) for i in range(2)]
    census = Census(h.service.gate, h.service.paths, h.service.intake, h.metrics)
    count, refused, oldest = census.count()
    assert (count, refused) == (2, 1) and 0 <= oldest < 60
    h.upsert(*waiting)
    assert census.count() == (0, 1, 0.0)


def test_check_answers_an_uploads_verdict_and_stores_nothing(gated: Callable[..., Harness], public: Path,
                                                             tmp_path: Path):
    refs, users, ana = tmp_path / "refs", str(tmp_path / "users"), ("ana", "correct horse")
    knife = write_image(refs / "weapons" / "knife.jpg", seed=40)
    set_user(users, *ana)
    h = gated(prohibited__reference_dir=str(refs), prohibited__image_threshold=0.999, metrics__listen="127.0.0.1:0",
              http__users_file=users, http__max_body_bytes=50_000)
    h.upsert(write_image(h.root / "a.jpg", seed=41))
    stored = h.verdicts()
    assert h.service._http is not None
    client = Client(h.service._http.port, h.metrics)

    def check(body: bytes, auth: tuple[str, str] | None = ana) -> tuple[int, dict[str, object]]:
        status, _, answer = client.request("POST", "/check", body, auth=auth, headers={"Content-Type": "image/jpeg"})
        return status, json.loads(answer) if answer.startswith(b"{") else {}

    new = write_image(tmp_path / "new.jpg", seed=42).read_bytes()
    assert check(new, auth=None)[0] == 401
    status, verdict = check(new)
    assert status == 200 and verdict["status"] == "ok" and verdict["action"] == "publish"
    assert verdict["match_id"] is None and verdict["sha256"] == hashlib.sha256(new).hexdigest()
    status, verdict = check((public / "a.jpg").read_bytes())
    assert (status, verdict["status"], verdict["score"], verdict["action"]) == (200, "duplicate", 1.0, "publish")
    assert (verdict["match_id"], verdict["match_path"]) == (stored[str(public / "a.jpg")].id, str(public / "a.jpg"))
    status, verdict = check(knife.read_bytes())
    assert (status, verdict["status"], verdict["label"], verdict["action"]) == (200, "prohibited", "weapons",
                                                                                "quarantine")
    status, verdict = check(b"GIF89a but not really")
    assert status == 400 and verdict["error"]
    assert check(b"\0" * 50_001)[0] == 413
    assert h.verdicts() == stored and files_under(public) == {str(public / "a.jpg"): sha(public / "a.jpg")}


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A directory on another file system than tmp_path: /dev/shm is a tmpfs on Linux."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.statvfs(shm).f_fsid == 0:
        pytest.fail("/dev/shm is missing: this test needs a tmpfs to publish across file systems (never skipped)")
    directory = shm / f"clipwatch-test-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_publishing_across_file_systems_copies_syncs_and_removes_the_source(
        make_harness: Callable[..., Harness], tmpfs: Path, tmp_path: Path):
    h = make_harness(watch__publish_dir=str(tmpfs))
    assert os.stat(tmpfs).st_dev != os.stat(h.root).st_dev, "incoming and publish must be on two file systems"
    uploads = [write_image(h.root / f"{i}.jpg", seed=20 + i) for i in range(3)]
    contents = {p.name: (sha(p), p.stat().st_mtime) for p in uploads}
    h.upsert(*uploads)
    assert not any(p.exists() for p in uploads)
    assert {p.name: (sha(p), p.stat().st_mtime) for p in tmpfs.iterdir()} == contents  # no partial copy left
    assert set(h.verdicts()) == {str(tmpfs / name) for name in contents}


@pytest.mark.parametrize("crash", CRASHES)
def test_after_a_crash_at_any_step_of_a_publish_the_next_start_finishes_it(
        gated: Callable[..., Harness], public: Path, monkeypatch: pytest.MonkeyPatch, crash: str):
    h = gated()
    upload = write_image(h.root / "sub" / "p.jpg", seed=12)
    content = sha(upload)
    with monkeypatch.context() as patched:
        inject = CRASHES[crash]
        inject(patched, h) if crash == "before the journal is cleared" else inject(patched)  # type: ignore[call-arg]
        with pytest.raises(Crash):
            h.upsert(upload)
    restarted = gated()  # start-up replays the journal
    assert not upload.exists()
    assert files_under(public) == {str(public / "sub" / "p.jpg"): content}
    assert set(restarted.verdicts()) == {str(public / "sub" / "p.jpg")}
    assert restarted.store.pending_moves() == []


# --- real daemons ---------------------------------------------------------------------------------------------


class Watch:
    """Lists a directory tree over and over on a thread: every file name it ever saw there."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.seen, self.rounds = directory, set[str](), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _, _, names in os.walk(self.directory):
                self.seen.update(names)
            self.rounds += 1
            time.sleep(0.001)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def upload(incoming: Path, name: str, data: bytes, rng: random.Random) -> None:
    """As upload handlers do: written in place, or written under a temporary name and renamed."""
    final = incoming / name
    if rng.random() < 0.5:
        final.write_bytes(data)
    else:
        temporary = final.with_name(f".{final.name}.part")
        temporary.write_bytes(data)
        temporary.rename(final)


def upload_all(incoming: Path, uploads: dict[str, bytes], rng: random.Random) -> None:
    for name, data in uploads.items():
        upload(incoming, name, data, rng)
        time.sleep(0.015)  # a burst spread over several of the daemons killed


@pytest.fixture
def gated_env(daemon_env: dict[str, str], public: Path, tmp_path: Path) -> dict[str, str]:
    refs = tmp_path / "refs"
    for i in range(3):
        write_image(refs / "forbidden" / f"{i}.jpg", seed=900 + i)
    # Only exact copies are duplicates or prohibited (thresholds 1.0 and 0.999): random pictures on the tiny
    # random model may score 0.9 against a reference, and these tests are about where files go, not thresholds.
    return {**daemon_env, "CLIPWATCH_WATCH__PUBLISH_DIR": str(public), "CLIPWATCH_QUARANTINE__DIR": str(tmp_path / "q"),
            "CLIPWATCH_PROHIBITED__REFERENCE_DIR": str(refs), "CLIPWATCH_PROHIBITED__IMAGE_THRESHOLD": "0.999",
            "CLIPWATCH_DUPLICATES__THRESHOLD": "1.0", "CLIPWATCH_WATCH__RESCAN_INTERVAL_S": "3600"}


def test_a_prohibited_upload_is_never_visible_in_the_publish_directory(gated_env: dict[str, str], public: Path,
                                                                       tmp_path: Path):
    incoming, refs, rng = tmp_path / "watched", tmp_path / "refs" / "forbidden", random.Random(1)
    daemon = Daemon(gated_env)
    watch = Watch(public)
    try:
        wait_until(lambda: daemon.saw("running"), timeout=60, what="the daemon to run")
        forbidden = [f"bad-{i}.jpg" for i in range(12)]
        clean = [f"ok-{i}.jpg" for i in range(12)]
        for i, (bad, good) in enumerate(zip(forbidden, clean, strict=True)):
            upload(incoming, bad, (refs / f"{i % 3}.jpg").read_bytes(), rng)
            write_image(tmp_path / "staging" / good, seed=i)
            upload(incoming, good, (tmp_path / "staging" / good).read_bytes(), rng)
        wait_until(lambda: all((public / n).exists() for n in clean) and all((tmp_path / "q" / n).exists()
                                                                            for n in forbidden),
                   timeout=60, what="every upload published or quarantined")
        metrics = scrape(daemon)
    finally:
        seen = watch.stop()
        assert daemon.stop() == 0
    assert watch.rounds > 100  # the directory was looked at all along
    assert not seen & set(forbidden) and set(clean) <= seen
    assert metrics["clipwatch_files_published_total"] == len(clean)
    # Our own moves are not read again: each upload was read once, none found "unchanged" after its publish.
    assert metrics['clipwatch_files_processed_total{result="unchanged"}'] == 0


def test_kill_9_during_a_burst_of_500_uploads_loses_and_doubles_nothing(gated_env: dict[str, str], reader: Store,
                                                                        public: Path, tmp_path: Path):
    incoming, refs, quarantined = tmp_path / "watched", tmp_path / "refs" / "forbidden", tmp_path / "q"
    staging, rng = tmp_path / "staging", random.Random(500)
    uploads: dict[str, bytes] = {}
    for i in range(500):
        name = f"{i // 100}/{i:03}.jpg"
        if i % 50 == 7:
            uploads[name] = (refs / f"{i % 3}.jpg").read_bytes()  # prohibited: exact copies of references
        elif i % 50 == 13:
            uploads[name] = b"\xff\xd8 not really a jpeg"  # broken: refused, stays in incoming
        else:
            uploads[name] = write_image(staging / f"{i}.jpg", seed=1000 + i, size=(32, 24)).read_bytes()
    for directory in {n.split("/")[0] for n in uploads}:
        (incoming / directory).mkdir(parents=True, exist_ok=True)
    env = {**gated_env, "CLIPWATCH_METRICS__LISTEN": "", "CLIPWATCH_MODEL__BATCH_SIZE": "16"}
    watch = Watch(public)
    writer = threading.Thread(target=upload_all, args=(incoming, uploads, random.Random(1)), daemon=True)
    writer.start()
    for _ in range(4):
        daemon = Daemon(env)
        wait_until(lambda d=daemon: d.saw("running"), timeout=60, what="the daemon to run")
        time.sleep(rng.uniform(0.2, 1.5))
        daemon.kill()
    writer.join(60)
    final = Daemon(env)
    broken = {n for n, data in uploads.items() if data.startswith(b"\xff\xd8 not")}
    forbidden = {n for n, data in uploads.items() if data in {p.read_bytes() for p in refs.iterdir()}}

    def refused() -> set[str]:
        return {str(e["path"]) for e in final.events if e.get("event") == "file_rejected"}

    def settled() -> bool:
        left = {str(p.relative_to(incoming)) for p in incoming.rglob("*.jpg")}
        return (left == broken and len(files_under(public)) + len(files_under(quarantined)) == 500 - len(broken)
                and len(refused()) == len(broken))
    try:
        wait_until(lambda: final.saw("running"), timeout=60, what="the last daemon to run")
        wait_until(settled, timeout=240, interval=0.5, what="every upload published, quarantined or refused")
        wait_until(lambda: not reader.pending_moves(), timeout=30, what="the journal to empty")
    finally:
        seen = watch.stop()
        assert final.stop() == 0
    where = {**{str(Path(p).relative_to(public)): p for p in files_under(public)},
             **{str(Path(p).relative_to(quarantined)): p for p in files_under(quarantined)},
             **{n: str(incoming / n) for n in broken}}
    assert sorted(where) == sorted(uploads)  # every file in exactly one place, under its own name
    assert all(Path(where[n]).read_bytes() == uploads[n] for n in uploads)  # whole, and its own bytes
    assert {n for n in uploads if where[n].startswith(str(quarantined))} == forbidden
    assert not seen & {os.path.basename(n) for n in forbidden}  # never visible in public, even for a moment
    rows = all_verdicts(reader)
    assert set(rows) == {where[n] for n in uploads if n not in broken}  # one row each, at its place; none else
    assert refused() == {str(incoming / n) for n in broken}  # the last daemon says why each stays
