"""A stateful property test: random lives of an upload directory, checked at every quiet point.

Hypothesis drives create, copy, re-encode in place, move (paired by inotify or not), delete, dismiss,
daemon restart and kill -9 against the real daemon's parts (the same `Service` as `clipwatch run`, driven
batch by batch) on SQLite, and a shorter run on MySQL 9, with duplicates.action drawn from flag,
quarantine and reject. After each quiet point (the changes since the last one processed as one batch):

- exactly one row per image file under the roots, with the file's sha256; no row for a missing file
  (a quarantined file's row is at its quarantine path);
- `match_id` is never the row's own id and always names an existing row of another path;
- byte-identical copies are flagged: at most one of them is `ok`, unless that pair was dismissed;
- a pair a person dismissed is never flagged again: right after the dismissal no row is flagged for it
  (by the files' current bytes), and no verdict made later is for it. (A verdict made earlier against a
  file whose bytes then changed keeps its evidence: a copy keeps its verdict when its original is
  edited, whatever the edit produces.)
- every file that was ever written is under a root or in the quarantine, once: nothing lost or doubled;
- a file renamed (and not edited meanwhile) keeps its row, whether inotify paired the rename or not;
- no journalled move is left pending.

A kill -9 is a crash raised inside the worker at a random point (before the commit, inside the
transaction, after the commit and before the move, between link and unlink, before the journal is
cleared): a real process cannot be killed at a chosen instruction, and a real process per step would make
each example take minutes. `tests/test_quarantine.py` kills real daemons. The examples are bounded for
CI, the same ones every run; CLIPWATCH_PROPERTY_EXAMPLES=N explores N random ones, for a long run by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from PIL import Image

from clipwatch import quarantine
from clipwatch.changes import Change
from clipwatch.config_loader import load_config
from clipwatch.embedder import Embedder
from clipwatch.review import decide
from clipwatch.store import FinishMove, Upsert
from clipwatch.vocab import ChangeKind, Decision
from conftest import (
    MARIADB_URL,
    MYSQL_URL,
    Harness,
    all_verdicts,
    drop_mysql_table,
    mariadb_url,
    mysql_url,
    write_image,
)

EXAMPLES = int(os.environ.get("CLIPWATCH_PROPERTY_EXAMPLES", "0"))
SERVERS = {"mysql": MYSQL_URL, "mariadb": MARIADB_URL}
CRASH_POINTS = ("before the commit", "inside the transaction", "after the commit", "between link and unlink",
                "before the journal is cleared")
TALLY: Counter[str] = Counter()  # what a long run reached, printed at its end (`pytest -s`)


class Crash(BaseException):
    """The process dies here (BaseException: no `except Exception` of the daemon catches it)."""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_below(directory: Path) -> dict[str, str]:
    return {str(p): sha(p) for p in directory.rglob("*") if p.is_file()} if directory.exists() else {}


class UploadDirectory(RuleBasedStateMachine):
    def __init__(self, embedder: Embedder, model_dir: Path, store: str) -> None:
        super().__init__()
        self.embedder, self.model_dir, self.store_kind = embedder, model_dir, store
        self.base = Path(tempfile.mkdtemp(prefix="clipwatch-property-"))
        self.root, self.q = self.base / "watched", self.base / "quarantine"
        self.root.mkdir()
        self.table = "p_" + uuid.uuid4().hex[:12]
        self.files: dict[str, bytes] = {}  # what the test wrote under the root and did not delete
        self.written: Counter[str] = Counter()  # sha256 of every file alive, wherever the daemon put it
        self.pending: list[Change] = []
        self.dismissed: set[tuple[str, str]] = set()
        self.made: dict[int, tuple[Any, ...]] = {}  # row -> its verdict when last looked at
        self.names = 0
        self.ids: dict[str, int] = {}  # row id of each file under the root at the last quiet point
        self.renamed: dict[str, int] = {}  # files renamed since: the row id each must keep
        self.edited: set[str] = set()  # files re-encoded since the last quiet point
        self.h: Harness | None = None

    # --- the daemon ---------------------------------------------------------------------------------

    @initialize(action=st.sampled_from(["flag", "quarantine", "reject"]))
    def start(self, action: str) -> None:
        self.action = action
        TALLY["runs"] += 1
        # One file the rules never touch: a root that is empty while the store has rows for it keeps them
        # (docs/behaviour.md: far more often an unmounted share than a wipe), which is not under test here.
        write_image(self.root / "always-here.jpg", seed=1000, size=(48, 36))
        self.written[sha(self.root / "always-here.jpg")] += 1
        self.h = self._open()

    def _open(self) -> Harness:
        url = SERVERS.get(self.store_kind, f"sqlite://{self.base}/store.sqlite3")
        env = {"CLIPWATCH_WATCH__PATHS": str(self.root), "CLIPWATCH_MODEL__NAME": str(self.model_dir),
               "CLIPWATCH_MODEL__DEVICE": "cpu", "CLIPWATCH_MODEL__MAX_WAIT_MS": "0", "CLIPWATCH_STORE__URL": url,
               "CLIPWATCH_STORE__TABLE": self.table, "CLIPWATCH_STORE__INSTANCE": "test",
               "CLIPWATCH_METRICS__LISTEN": "", "CLIPWATCH_DAEMON__DATA_DIR": str(self.base / "data"),
               "CLIPWATCH_DUPLICATES__ACTION": self.action, "CLIPWATCH_QUARANTINE__DIR": str(self.q),
               "CLIPWATCH_MODEL__BATCH_SIZE": "64"}
        h = Harness(load_config(None, env=env), self.embedder)
        # What a start does: replay the moves journal (in `open`), then reconcile the roots. The scan is
        # queued whole before the worker drains it (`Service.scan` runs both at once, so its batches would
        # depend on timing, and hypothesis needs every example to replay the same).
        h.service._scan_all(settle=False)
        h.feed()
        self._follow_quarantine()
        return h

    def teardown(self) -> None:
        if self.h is not None:
            self.h.service.close()
        if self.store_kind in SERVERS:
            drop_mysql_table(self.table, SERVERS[self.store_kind])
        shutil.rmtree(self.base, ignore_errors=True)

    # --- what happens to the files ----------------------------------------------------------------------

    def _new_path(self, subdir: bool = False) -> Path:
        self.names += 1
        directory = self.root / "sub" if subdir else self.root
        directory.mkdir(exist_ok=True)
        return directory / f"f{self.names:03}.jpg"

    def _wrote(self, path: Path, old: bytes | None = None) -> None:
        if old is not None:
            self.written[hashlib.sha256(old).hexdigest()] -= 1
        self.files[str(path)] = path.read_bytes()
        self.written[sha(path)] += 1
        self.pending.append(Change(ChangeKind.UPSERT, str(path)))

    @rule(seed=st.integers(0, 40), subdir=st.booleans(), copies=st.integers(0, 2))
    def create(self, seed: int, subdir: bool, copies: int) -> None:
        """An upload, sometimes with copies of it in the same batch (an archive copied in)."""
        path = self._new_path(subdir)
        write_image(path, seed=seed, size=(48, 36))
        self._wrote(path)
        for n in range(copies):
            copy = self._new_path(subdir)
            copy.write_bytes(path.read_bytes())
            os.utime(copy, (path.stat().st_mtime - 10 * (n + 1),) * 2)  # a copy may be older than the upload
            self._wrote(copy)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), subdir=st.booleans())
    def copy(self, data: st.DataObject, subdir: bool) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)))
        dest = self._new_path(subdir)
        dest.write_bytes(self.files[src])
        self._wrote(dest)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), quality=st.integers(50, 95))
    def reencode_in_place(self, data: st.DataObject, quality: int) -> None:
        path = Path(data.draw(st.sampled_from(sorted(self.files))))
        old = path.read_bytes()
        Image.open(path).convert("RGB").save(path, format="JPEG", quality=quality)
        if path.read_bytes() != old:
            self._wrote(path, old)
            self.edited.add(str(path))
            self.renamed.pop(str(path), None)  # an edited file judged anew may take a new row

    @precondition(lambda self: self.files)
    @rule(data=st.data(), subdir=st.booleans(), paired=st.booleans())
    def move(self, data: st.DataObject, subdir: bool, paired: bool) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)))
        dest = self._new_path(subdir)
        os.rename(src, dest)
        self.files[str(dest)] = self.files.pop(src)
        row_id = self.renamed.pop(src, self.ids.get(src))
        if src in self.edited:
            self.edited.add(str(dest))
        elif row_id is not None:
            self.renamed[str(dest)] = row_id
        if paired:  # inotify saw both names
            self.pending.append(Change(ChangeKind.MOVE, src, str(dest)))
        else:  # a directory not watched yet: the new name appears, the old one is gone
            self.pending += [Change(ChangeKind.UPSERT, str(dest)), Change(ChangeKind.DELETE, src)]

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        os.unlink(path)
        self.written[hashlib.sha256(self.files.pop(path)).hexdigest()] -= 1
        self.renamed.pop(path, None)
        self.pending.append(Change(ChangeKind.DELETE, path))

    @rule(data=st.data())
    def dismiss(self, data: st.DataObject) -> None:
        assert self.h is not None
        self.quiet()
        flagged = [r for r in self.h.store.flagged() if r.match_sha256 is not None]
        if not flagged:
            return
        row = data.draw(st.sampled_from(flagged))
        self.verdicts_are_consistent()  # the verdicts made so far, before the decision
        decide(self.h.store, [row.id], Decision.DISMISSED, "property test")
        TALLY["dismissals"] += 1
        pair = tuple(sorted((row.sha256, row.match_sha256 or "")))
        self.dismissed.add(pair)  # type: ignore[arg-type]
        self.h.service.decisions.refresh(self.h.store)  # what the index sync does every round
        still = [r.path for r in self.h.store.flagged() if tuple(sorted((r.sha256, r.match_sha256 or ""))) == pair]
        assert not still, f"dismissing row {row.id} left {still} flagged for the same pair"

    @rule()
    def quiet(self) -> None:
        """The daemon catches up: everything that happened since the last quiet point, in one batch."""
        assert self.h is not None
        changes, self.pending = self.pending, []
        self.h.feed(*changes)
        self._follow_quarantine()

    @rule()
    def restart(self) -> None:
        """A clean stop (the batch in hand is dropped: events not yet processed are never seen), a start."""
        assert self.h is not None
        self.h.service.close()
        self.pending = []
        self.h = self._open()

    @precondition(lambda self: self.pending or self.files)
    @rule(data=st.data())
    def kill_9(self, data: st.DataObject) -> None:
        """The daemon dies at a point of processing what is pending (with, often, one more copy of a file:
        a duplicate to move, so that the move's own crash points are reached); the next start repairs."""
        assert self.h is not None
        if self.files and (not self.pending or data.draw(st.booleans())):
            self.copy(data, subdir=False)
        point = data.draw(st.sampled_from(CRASH_POINTS if self.action != "flag" else CRASH_POINTS[:2]))
        changes, self.pending = self.pending, []
        with pytest.MonkeyPatch.context() as patched:
            _arm(patched, self.h, point)
            try:
                self.h.feed(*changes)
            except Crash:
                TALLY[f"crashes {point}"] += 1
        self.h.service.close()  # the process is gone: its connections with it
        self.h = self._open()

    def _follow_quarantine(self) -> None:
        """Files the daemon moved out of the root are no longer the test's to touch."""
        for path in [p for p in self.files if not os.path.exists(p)]:
            del self.files[path]

    # --- what must hold at every quiet point ------------------------------------------------------------

    @invariant()
    def rows_match_files(self) -> None:
        if self.h is None or self.pending:
            return
        rows = all_verdicts(self.h.store)
        TALLY["quiet points checked"] += 1
        under = files_below(self.root)
        quarantined = files_below(self.q)
        rows_under = list(self.h.store.iter_rows_under(str(self.root)))
        stored = {r.path: r.sha256 for r in rows_under}
        assert stored == under  # one row per file under the roots, with its bytes; none for a missing file
        ids = {r.path: r.id for r in rows_under}
        for path, row_id in self.renamed.items():  # never judged anew, so never moved away either
            assert ids.get(path) == row_id, f"{path} was renamed but lost its row {row_id}"
        self.ids, self.renamed, self.edited = ids, {}, set()
        outside = {p for p in rows if not p.startswith(str(self.root) + os.sep)}
        assert outside <= set(quarantined)  # a row outside the roots is a quarantined file's
        assert not self.h.store.pending_moves()
        alive = Counter(list(under.values()) + list(quarantined.values()))
        assert alive == +self.written  # every file ever written is somewhere, exactly once

    @invariant()
    def verdicts_are_consistent(self) -> None:
        if self.h is None or self.pending:
            return
        rows = all_verdicts(self.h.store)
        by_id = {r.id: (path, r) for path, r in rows.items()}
        shas = {r.id: s for r, s in zip(rows.values(), self._shas(rows), strict=True)}
        ok_by_sha: Counter[str] = Counter()
        for path, r in rows.items():
            if r.status == "ok":
                ok_by_sha[shas[r.id]] += 1
            if r.match_id is None:
                continue
            assert r.match_id != r.id, f"{path} is a duplicate of itself"
            assert r.match_id in by_id, f"{path} names row {r.match_id}, which does not exist"
            assert by_id[r.match_id][0] != path
            verdict = (shas[r.id], r.status, r.match_id, r.score)
            if self.made.get(r.id) != verdict:  # made since the last look: never for a pair already dismissed
                self.made[r.id] = verdict
                pair = tuple(sorted((shas[r.id], shas[r.match_id])))
                assert pair not in self.dismissed, f"{path} was flagged for a dismissed pair"
        for content, n in ok_by_sha.items():
            assert n <= 1 or (content, content) in self.dismissed, f"{n} byte-identical files are all ok"

    def _shas(self, rows: dict[str, Any]) -> list[str]:
        assert self.h is not None
        found = self.h.store.shas_of([r.id for r in rows.values()])
        return [found[r.id] for r in rows.values()]


def _arm(patched: pytest.MonkeyPatch, h: Harness, point: str) -> None:
    def crash(*args: object, **kwargs: object) -> Any:
        raise Crash

    if point == "before the commit":
        patched.setattr(h.embedder, "embed_images", crash)
    elif point == "inside the transaction":
        real = h.store._apply_run  # type: ignore[attr-defined]

        def apply_run(cur: Any, kind: type, ops: list[Any], applied: Any) -> None:
            real(cur, kind, ops, applied)
            if kind is Upsert:
                raise Crash  # rows written, not committed: the server rolls them back

        patched.setattr(h.store, "_apply_run", apply_run)
    elif point == "after the commit":
        patched.setattr(quarantine, "complete", crash)
    elif point == "between link and unlink":
        def half_move(src: str, dest: str) -> None:
            os.link(src, dest)
            raise Crash

        patched.setattr(quarantine, "move", half_move)
    else:
        real_apply = h.store.apply

        def apply(ops: list[Any]) -> Any:
            if any(isinstance(op, FinishMove) for op in ops):
                raise Crash
            return real_apply(ops)

        patched.setattr(h.store, "apply", apply)


def _run(embedder: Embedder, model_dir: Path, store: str, examples: int, steps: int) -> None:
    run_state_machine_as_test(
        lambda: UploadDirectory(embedder, model_dir, store),
        # In CI the same examples every run (derandomize): a red run always means the change broke something.
        # A long run by hand (CLIPWATCH_PROPERTY_EXAMPLES) explores at random.
        settings=settings(max_examples=EXAMPLES or examples, stateful_step_count=steps, deadline=None,
                          derandomize=not EXAMPLES, database=None if not EXAMPLES else settings.default.database,
                          suppress_health_check=list(HealthCheck), print_blob=True))
    if EXAMPLES:
        print(f"\n{store}: " + ", ".join(f"{n} {what}" for what, n in sorted(TALLY.items())))


@pytest.mark.timeout(600 if not EXAMPLES else 10 * EXAMPLES)
def test_random_lives_of_an_upload_directory_keep_every_promise_on_sqlite(embedder: Embedder, model_dir: Path):
    _run(embedder, model_dir, "sqlite", examples=150, steps=25)


@pytest.mark.mysql
@pytest.mark.timeout(600 if not EXAMPLES else 10 * EXAMPLES)
def test_random_lives_of_an_upload_directory_keep_every_promise_on_mysql(embedder: Embedder, model_dir: Path):
    mysql_url()  # fails, never skips, without a server
    _run(embedder, model_dir, "mysql", examples=20, steps=20)


@pytest.mark.mariadb
@pytest.mark.timeout(600 if not EXAMPLES else 10 * EXAMPLES)
def test_random_lives_of_an_upload_directory_keep_every_promise_on_mariadb(embedder: Embedder, model_dir: Path):
    mariadb_url()  # fails, never skips, without a server
    _run(embedder, model_dir, "mariadb", examples=20, steps=20)

