"""Files moved only after their row commits, and moves that survive a crash at any moment.

After any crash, every file is under a root with its row, or in the quarantine with its row (quarantine)
or without one (reject): never lost, never in both places, never in the quarantine with a row that still
points at the old path. The crashes here are raised inside the worker at exact points (a process cannot
be killed at an exact instruction from outside); the last test kills real daemons with SIGKILL.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clipwatch import quarantine
from clipwatch.changes import Change
from clipwatch.errors import StoreError
from clipwatch.store import FinishMove, JournalMove, RecordAction, Store
from clipwatch.vocab import ChangeKind
from conftest import Daemon, Harness, all_verdicts, wait_until, write_image


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, nothing is cleaned up (BaseException, so no
    `except Exception` in the daemon catches it)."""


def files_under(directory: Path) -> dict[str, str]:
    """path -> sha256 of every file below `directory` (hidden partial copies included)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.rglob("*") if p.is_file()}


def original_and_copy(h: Harness) -> tuple[Path, Path]:
    original = write_image(h.root / "original.jpg", seed=1)
    h.upsert(original)
    (h.root / "sub").mkdir()
    copy = h.root / "sub" / "copy.jpg"
    copy.write_bytes(original.read_bytes())
    os.utime(copy, (original.stat().st_mtime + 5,) * 2)
    return original, copy


@pytest.mark.parametrize("action", ["quarantine", "reject"])
def test_a_file_is_moved_only_after_the_transaction_holding_its_verdict_commits(
        make_harness: Callable[..., Harness], tmp_path: Path, action: str):
    h = make_harness(duplicates__action=action, quarantine__dir=str(tmp_path / "q"))
    original, copy = original_and_copy(h)
    observed: list[tuple[bool, list[type]]] = []
    real_apply = h.store.apply

    def watching_apply(ops):  # type: ignore[no-untyped-def]
        observed.append((copy.exists(), [type(op) for op in ops]))
        return real_apply(ops)

    h.store.apply = watching_apply  # type: ignore[method-assign]
    h.upsert(copy)
    (in_place, first_ops), (moved_when_finished, second_ops) = observed
    assert in_place and JournalMove in first_ops  # the journal commits with the verdict, the file still there
    recorded = [RecordAction] if action == "quarantine" else []  # the history says where it came from
    assert not moved_when_finished and second_ops == [FinishMove, *recorded]
    assert not copy.exists() and (tmp_path / "q" / "sub" / "copy.jpg").exists()
    if action == "quarantine":
        (entry,) = h.store.history(None, 10)
        assert (entry.deed, entry.path, entry.dest, entry.decided_by) == (
            "quarantined", str(copy), str(tmp_path / "q" / "sub" / "copy.jpg"), "clipwatch")
        assert entry.row_id == h.verdicts()[str(tmp_path / "q" / "sub" / "copy.jpg")].id


@pytest.mark.parametrize("action", ["quarantine", "reject"])
def test_a_batch_that_never_commits_moves_nothing(make_harness: Callable[..., Harness], tmp_path: Path, action: str):
    h = make_harness(duplicates__action=action, quarantine__dir=str(tmp_path / "q"))
    original, copy = original_and_copy(h)
    stop = threading.Event()

    def outage(ops):  # type: ignore[no-untyped-def]
        # A stand-in for the database going away exactly at the commit (a real server cannot be stopped
        # at that instant on demand); the daemon is then told to stop while it waits to retry.
        stop.set()
        raise StoreError("connection lost")

    h.store.apply = outage  # type: ignore[method-assign]
    assert h.worker.process([Change(ChangeKind.UPSERT, str(copy))], [h.worker.batcher.submit(str(copy))],
                            stop) is None
    assert copy.exists() and files_under(tmp_path / "q") == {}
    assert str(copy) not in h.verdicts()


def crash_before_moving(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(pending):  # type: ignore[no-untyped-def]
        raise Crash

    monkeypatch.setattr(quarantine, "complete", crash)


def crash_between_link_and_unlink(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_move(src: str, dest: str) -> None:
        os.link(src, dest)
        raise Crash

    monkeypatch.setattr(quarantine, "move", half_move)


def crash_in_a_copy_across_file_systems(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test's directories share one file system, so the kernel's EXDEV is stood in for on the first link.
    real_link = os.link

    def link(src, dest, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not os.path.basename(src).startswith("."):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dest, *args, **kwargs)

    def copystat(src: str, dest: str) -> None:
        raise Crash  # the partial copy is written, not yet linked into place

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(shutil, "copystat", copystat)


def crash_before_the_journal_is_cleared(monkeypatch: pytest.MonkeyPatch, h: Harness) -> None:
    real_apply = h.store.apply

    def apply(ops):  # type: ignore[no-untyped-def]
        if any(isinstance(op, FinishMove) for op in ops):
            raise Crash
        return real_apply(ops)

    monkeypatch.setattr(h.store, "apply", apply)


CRASHES = {"before the move": crash_before_moving, "between link and unlink": crash_between_link_and_unlink,
           "in a copy across file systems": crash_in_a_copy_across_file_systems,
           "before the journal is cleared": crash_before_the_journal_is_cleared}


@pytest.mark.parametrize("crash", CRASHES)
@pytest.mark.parametrize("action", ["quarantine", "reject"])
def test_after_a_crash_at_any_step_of_a_move_the_next_start_finishes_it(
        make_harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str,
        crash: str):
    settings = dict(duplicates__action=action, quarantine__dir=str(tmp_path / "q"))
    h = make_harness(**settings)
    original, copy = original_and_copy(h)
    content = hashlib.sha256(copy.read_bytes()).hexdigest()
    with monkeypatch.context() as patched:
        inject = CRASHES[crash]
        inject(patched, h) if crash == "before the journal is cleared" else inject(patched)  # type: ignore[call-arg]
        with pytest.raises(Crash):
            h.upsert(copy)
    restarted = make_harness(**settings)  # start-up replays the journal
    moved_to = tmp_path / "q" / "sub" / "copy.jpg"
    assert not copy.exists()
    assert files_under(tmp_path / "q") == {str(moved_to): content}  # one copy, whole; no partial file left
    rows = restarted.verdicts()
    if action == "quarantine":
        assert set(rows) == {str(original), str(moved_to)}
        assert rows[str(moved_to)][1:3] == ("duplicate", rows[str(original)].id)
    else:
        assert set(rows) == {str(original)}
    assert restarted.store.pending_moves() == []


def test_a_move_that_fails_leaves_the_file_flagged_in_place(make_harness: Callable[..., Harness], tmp_path: Path):
    h = make_harness(duplicates__action="quarantine", quarantine__dir=str(tmp_path / "q"))
    original, copy = original_and_copy(h)
    (tmp_path / "q" / "sub").mkdir(parents=True)
    (tmp_path / "q" / "sub").chmod(0o500)  # root ignores permissions: the link is refused by a file in the way
    real_complete = quarantine.complete

    def occupied(pending):  # type: ignore[no-untyped-def]
        Path(pending.dest).write_bytes(b"someone else's file")
        return real_complete(pending)

    quarantine_complete = occupied
    try:
        h.store_apply = None
        import clipwatch.committer as committer

        committer.quarantine.complete = quarantine_complete  # type: ignore[attr-defined]
        h.upsert(copy)
    finally:
        committer.quarantine.complete = real_complete  # type: ignore[attr-defined]
        (tmp_path / "q" / "sub").chmod(0o700)
    rows = h.verdicts()
    assert copy.exists() and (tmp_path / "q" / "sub" / "copy.jpg").read_bytes() == b"someone else's file"
    assert rows[str(copy)][1:3] == ("duplicate", rows[str(original)].id)  # flagged where it is
    assert h.store.pending_moves() == []
    errors = h.metrics.registry.get_sample_value
    assert errors("clipwatch_errors_total", {"stage": "move", "reason": "move_failed"}) == 1


def _quarantine_state(store: Store, root: Path, q: Path) -> tuple[dict[str, str], dict[str, object]]:
    return {**files_under(root), **files_under(q)}, all_verdicts(store)


def test_a_source_that_cannot_be_unlinked_keeps_the_file_in_one_place_flagged(
        make_harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    h = make_harness(duplicates__action="quarantine", quarantine__dir=str(tmp_path / "q"))
    original, copy = original_and_copy(h)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A read-only upload directory refuses the unlink; the tests run as root, which no directory
        # permission stops, so the kernel's refusal is stood in for.
        if os.fspath(path) == str(copy):
            raise PermissionError(13, "Permission denied", str(copy))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    h.upsert(copy)
    rows = h.verdicts()
    assert copy.exists() and files_under(tmp_path / "q") == {}  # the link made in the quarantine was undone
    assert rows[str(copy)][1:3] == ("duplicate", rows[str(original)].id) and h.store.pending_moves() == []


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql"], indirect=True)
@pytest.mark.timeout(300)
def test_kill_9_while_copies_are_being_quarantined_never_loses_or_doubles_a_file(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    root, q = tmp_path / "watched", tmp_path / "quarantine"
    pairs = 60
    for i in range(pairs):
        original = write_image(root / f"{i:03}-original.jpg", seed=i, size=(32, 24))
        copy = root / f"{i:03}-copy.jpg"
        copy.write_bytes(original.read_bytes())
        os.utime(copy, (original.stat().st_mtime + 100,) * 2)
    contents = files_under(root)
    # Only exact copies are duplicates here (threshold 1.0): sixty random pictures on the tiny model may
    # hold a near-duplicate pair, and this test is about moves, not about where the threshold lies.
    env = {**daemon_env, "CLIPWATCH_METRICS__LISTEN": "", "CLIPWATCH_DUPLICATES__ACTION": "quarantine",
           "CLIPWATCH_DUPLICATES__THRESHOLD": "1.0", "CLIPWATCH_QUARANTINE__DIR": str(q),
           "CLIPWATCH_MODEL__BATCH_SIZE": "8"}
    rng = random.Random(9)
    for _ in range(5):
        daemon = Daemon(env)
        wait_until(lambda d=daemon: d.saw("running"), timeout=60, what="the daemon to run")
        time.sleep(rng.uniform(0.0, 2.0))
        daemon.kill()
    final = Daemon(env)
    try:
        wait_until(lambda: final.saw("running"), timeout=60, what="the last daemon to run")

        def settled() -> bool:
            rows = all_verdicts(reader)
            return len(rows) == 2 * pairs and not reader.pending_moves() and len(files_under(q)) == pairs
        wait_until(settled, timeout=180, interval=0.5, what="every copy quarantined with its row")
    except AssertionError:
        print(len(all_verdicts(reader)), reader.pending_moves(), sorted(files_under(q)), "".join(final.raw[-60:]))
        raise
    finally:
        assert final.stop() == 0
    now = {**files_under(root), **files_under(q)}
    assert sorted(now.values()) == sorted(contents.values())  # nothing lost, nothing in two places
    rows = all_verdicts(reader)
    assert set(rows) == set(now)  # every file has its row at its current path, and no row lacks a file
    for i in range(pairs):
        original = rows[str(root / f"{i:03}-original.jpg")]
        assert original.status == "ok"
        assert rows[str(q / f"{i:03}-copy.jpg")][1:3] == ("duplicate", original.id)
