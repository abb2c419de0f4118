"""The committer: a judged batch becomes one transaction; then the index follows; then files move.

What happens to a file judged duplicate or prohibited, step by step (`duplicates.action`,
`prohibited.action`):

1. Before the transaction, a free name in `quarantine.dir` is chosen for each file to be moved.
2. One transaction writes every row of the batch. A quarantined file's row is written at its quarantine
   name (its earlier row, if it had one, is renamed there, keeping its id); a rejected file's row is not
   written (its earlier row is deleted). The same transaction journals each move (`<table>_moves`).
   Nothing has moved yet: a crash or an outage before the commit leaves every file where it was, and the
   next scan judges it again.
3. After the commit, each journalled move is done (`quarantine.complete`) and the journal entry removed.
   If a move cannot be done, the row goes back to the file (the verdict stays: flagged in place). A crash
   between 2 and 3 is repaired at the next start, before anything else: the journal is replayed.

Files the worker refused (broken images) are moved to `errors.quarantine_dir` after the commit too.

With a publish gate (`watch.publish_dir`, publish.py), a file of an incoming directory that passed is
moved the same way, step by step, into the publish directory (`Action.PUBLISH` in the journal).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import quarantine
from .config import Config
from .dbindex import SimilarityIndex
from .errors import StoreError
from .files import PathFilter
from .intake import Intake
from .judge import Verdict
from .logs import get_logger
from .metrics import Metrics
from .pdqindex import PerceptualIndex
from .planner import Entry, Failure, Plan
from .publish import Echoes, Gate, NameTaken
from .retry import Retrier
from .store import ActionRecord, Applied, Delete, JournalMove, Op, PendingMove, RecordAction, Rename, Store, Upsert
from .vocab import BANK_SIGNALS, MOVABLE_REASONS, Action, Deed, Reason, Result, Stage, Status

log = get_logger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where a judged entry's row goes, and what is done with its file."""

    entry: Entry
    verdict: Verdict
    action: Action  # the verdict's, or flag when the file cannot be moved
    row: Upsert  # at the file's own path or its name in the quarantine; not written for a rejected file
    held: str = ""  # a file that passed but stays in incoming: the file that has its name in the publish dir

    @property
    def stored(self) -> bool:
        return self.action != Action.REJECT

    @property
    def moves(self) -> bool:
        return self.action != Action.FLAG and self.entry.on_disk


@dataclass(frozen=True)
class Committed:
    applied: Applied
    counts: Counter[Result]  # how each change ended
    flagged: Counter[Status]  # verdicts other than ok


class Committer:
    def __init__(self, config: Config, store: Store, index: SimilarityIndex, paths: PathFilter, intake: Intake,
                 metrics: Metrics, retry: Retrier, model: str, echoes: Echoes | None = None,
                 copies: PerceptualIndex | None = None) -> None:
        self.config, self.store, self.index, self.paths, self.intake = config, store, index, paths, intake
        self.copies = copies
        self.metrics, self.retry, self.model = metrics, retry, model
        self.gate, self.echoes = Gate(config.watch.paths, config.watch.publish_dir), echoes or Echoes()

    def commit(self, plan: Plan, entries: Sequence[Entry], verdicts: Sequence[Verdict],
               failures: Sequence[Failure], stop: threading.Event | None) -> Committed | None:
        """Write, follow in the index, move files. None if asked to stop while the store was down (nothing
        of the batch was written; the next start's scan redoes it)."""
        placements = self._place(entries, verdicts)
        ops: list[Op] = [*plan.ops]
        for p in placements:
            ops += self._ops_of(p)
        with self.metrics.stage_seconds.labels(Stage.WRITE).time():
            applied = self.retry(lambda: self.store.apply(ops), stop)
        if applied is None:
            return None
        self._follow_in_index(applied, [p.row for p in placements if p.stored])
        with self.metrics.stage_seconds.labels(Stage.MOVE).time():
            outcomes = self._move_files(placements, applied, stop)
        moved = {key: p.row.path for p in placements if (key := p.entry.key) in outcomes
                 and outcomes[key] in (quarantine.Outcome.MOVED, quarantine.Outcome.ALREADY_MOVED)}
        self._log_verdicts(placements, applied, moved)
        for failure in [*plan.failures, *failures]:
            self._refused(failure)
        for p in placements:
            if p.held:
                self._held(p)
        counts = Counter(plan.counts)
        counts[Result.FAILED] += len(plan.failures) + len(failures)
        counts.update(_result(p, outcomes.get(p.entry.key)) for p in placements)
        return Committed(applied, counts, Counter(p.verdict.status for p in placements
                                                  if p.verdict.status != Status.OK))

    def _place(self, entries: Sequence[Entry], verdicts: Sequence[Verdict]) -> list[Placement]:
        taken: set[str] = set()
        placed: list[tuple[Entry, Verdict, Action, str, str]] = []
        for entry, verdict in zip(entries, verdicts, strict=True):
            action, path, held = verdict.action if verdict.status != Status.OK else Action.FLAG, entry.path, ""
            if action == Action.QUARANTINE and not entry.on_disk or self.gate.is_published(entry.path):
                action = Action.FLAG  # an imported vector whose file is elsewhere, or a public file: not moved
            if action != Action.FLAG and entry.on_disk:
                try:
                    path = quarantine.reserve(entry.path, self.paths, self.config.quarantine.dir, taken)
                except OSError as exc:
                    log.error("quarantine_failed", path=entry.path, error=str(exc), action="flag instead")
                    self.metrics.error(Stage.MOVE, Reason.MOVE_FAILED)
                    action = Action.FLAG
            elif entry.on_disk and not entry.rejudge and self.gate.root_of(entry.path):
                try:
                    path, action = self.gate.reserve(entry.path, taken), Action.PUBLISH
                except NameTaken as exc:
                    held = exc.dest
                except OSError as exc:
                    log.error("publish_failed", path=entry.path, error=str(exc), action="kept in incoming; tried "
                              "again at the next rescan")
                    self.metrics.error(Stage.MOVE, Reason.MOVE_FAILED)
            placed.append((entry, verdict, action, path, held))
        final = {e.key: path for e, _, action, path, _ in placed if action != Action.REJECT}
        return [Placement(e, v, action, _row(e, v, path, final), held) for e, v, action, path, held in placed]

    def _ops_of(self, p: Placement) -> list[Op]:
        e = p.entry
        ops: list[Op] = []
        if p.action in (Action.QUARANTINE, Action.PUBLISH) and e.own_id is not None:
            ops.append(Rename(e.path, p.row.path))  # the file's earlier row follows it, keeping its id
        elif p.action == Action.REJECT and e.own_id is not None:
            ops.append(Delete(e.path))
        if p.moves:
            ops.append(JournalMove(e.path, p.row.path, p.action, e.sha256))
        return [*ops, p.row] if p.stored else ops

    def _follow_in_index(self, applied: Applied, rows: Sequence[Upsert]) -> None:
        """The index learns this batch's rows at once (other instances' rows come through the sync)."""
        self.index.remove(applied.deleted)
        ours = [r for r in rows if r.model == self.model and r.path in applied.ids]
        if ours:
            self.index.upsert([applied.ids[r.path] for r in ours], np.stack([r.embedding for r in ours]))
        if self.copies is not None:
            self.copies.remove(applied.deleted)
            self.copies.upsert((applied.ids[r.path], r.hashes.pdq if r.hashes else None,
                                r.hashes.pdq_quality if r.hashes else None) for r in ours)
            self.copies.remove(applied.ids[r.path] for r in rows if r.path in applied.ids and r.model != self.model)
        self.metrics.index_size.set(len(self.index))

    def _move_files(self, placements: Sequence[Placement], applied: Applied,
                    stop: threading.Event | None) -> dict[int, quarantine.Outcome]:
        """Do the journalled moves; undo in the store what could not be done. Returns how each move ended,
        by entry key."""
        outcomes: dict[int, quarantine.Outcome] = {}
        after: list[Op] = []
        for p in placements:
            if not p.moves:
                continue
            pending = PendingMove(applied.moves[p.row.path], p.entry.path, p.row.path, p.action, p.entry.sha256)
            landed = _ctime(pending.src)
            self.echoes.expect(pending.src, pending.dest)
            outcome, why = quarantine.complete(pending)
            outcomes[p.entry.key] = outcome
            if outcome == quarantine.Outcome.FAILED:
                log.error(f"{'publish' if p.action == Action.PUBLISH else 'quarantine'}_failed", path=p.entry.path,
                          error=why, action="kept in incoming; tried again at the next rescan"
                          if p.action == Action.PUBLISH else "flag instead")
                self.metrics.error(Stage.MOVE, Reason.MOVE_FAILED)
            elif p.action == Action.PUBLISH and outcome == quarantine.Outcome.MOVED:
                self.metrics.published.inc()
                if landed is not None:
                    self.metrics.publish_latency.observe(max(0.0, time.time() - landed))
                log.info("published", path=p.entry.path, published_to=p.row.path, status=p.verdict.status)
            after += quarantine.settle(pending, outcome, replace(p.row, path=p.entry.path))
            if p.action == Action.QUARANTINE and outcome == quarantine.Outcome.MOVED:  # the history says whence
                after.append(RecordAction(ActionRecord(Deed.QUARANTINED, applied.ids.get(p.row.path), p.entry.path,
                                                       "clipwatch", p.row.path)))
        if after:
            done = self.retry(lambda: self.store.apply(after), stop)  # None: replayed from the journal at start
            if done is not None:
                self._follow_in_index(done, [op for op in after if isinstance(op, Upsert)])
        return outcomes

    def _log_verdicts(self, placements: Sequence[Placement], applied: Applied, moved: dict[int, str]) -> None:
        flagged = [p for p in placements if p.verdict.status != Status.OK]
        by_key = {p.entry.key: p for p in placements}
        try:
            paths = self.store.paths_of([p.verdict.match_id for p in flagged if p.verdict.match_id is not None])
        except StoreError:
            paths = {}  # the log line loses a detail; the row has it
        for p in flagged:
            v, done = p.verdict, p.action if p.entry.key in moved or not p.moves else Action.FLAG
            done = Action.FLAG if done == Action.PUBLISH else done  # the verdict's action; moved_to says where
            self.metrics.verdicts.labels(v.status, done, v.signal or "").inc()
            if v.status == Status.PROHIBITED and v.signal in BANK_SIGNALS:
                self.metrics.bank_matches.labels(v.label, v.signal).inc()
            if v.match_key is not None:
                matched: str | None = by_key[v.match_key].row.path
                match_id = applied.ids.get(matched or "")
            else:
                matched, match_id = paths.get(v.match_id) if v.match_id is not None else None, v.match_id
            log.info("verdict", path=p.entry.path, status=v.status, label=v.label, signal=v.signal,
                     score=None if v.score is None else round(v.score, 4), pdq_distance=v.pdq_distance,
                     matched_path=matched, match_id=match_id,
                     action=done, moved_to=moved.get(p.entry.key), rejudged=p.entry.rejudge or None)

    def _refused(self, failure: Failure) -> None:
        exc, path = failure.error, failure.path
        self.metrics.rejected(exc)
        moved_to = None
        if self.config.errors.quarantine_dir and exc.reason in MOVABLE_REASONS:
            try:
                moved_to = quarantine.reserve(path, self.paths, self.config.errors.quarantine_dir, set())
                quarantine.move(path, moved_to)
            except OSError as move_error:
                moved_to = None
                log.error("quarantine_failed", path=path, error=str(move_error), action="left in place")
        if moved_to is None:
            self.intake.remember_refused(path)  # not tried again until it changes
        log.warning("file_rejected", path=path, reason=exc.reason, error=str(exc), moved_to=moved_to)


    def _held(self, p: Placement) -> None:
        """A file that passed but whose name in the publish directory holds another file: it stays in incoming
        (its row there), and is tried again once that file is gone."""
        self.metrics.error(Stage.MOVE, Reason.PUBLISH_NAME_TAKEN)
        self.intake.remember_refused(p.entry.path, until_gone=p.held)
        log.warning("file_rejected", path=p.entry.path, reason=Reason.PUBLISH_NAME_TAKEN, taken_by=p.held,
                    error=f"its name in the publish directory holds another file ({p.held}); nothing is overwritten",
                    action="kept in incoming with its row; published at the first rescan after that name is free")


def _ctime(path: str) -> float | None:
    """When the file was last written or renamed into its directory: when it became complete in incoming."""
    try:
        return os.lstat(path).st_ctime
    except OSError:
        return None


def _result(p: Placement, outcome: quarantine.Outcome | None) -> Result:
    """How a judged entry ended: its row written (or rewritten), or its file moved away without one."""
    if p.entry.rejudge:
        return Result.REJUDGED
    if outcome in (quarantine.Outcome.CHANGED, quarantine.Outcome.VANISHED):
        return Result.VANISHED  # gone (or replaced) before it could be moved: no row for it
    if p.action == Action.REJECT and outcome != quarantine.Outcome.FAILED:
        return Result.REJECTED
    return Result.EMBEDDED


def _row(entry: Entry, verdict: Verdict, path: str, final: dict[int, str]) -> Upsert:
    if entry.vector is None:
        raise ValueError(f"{entry.path!r} has no vector to store")
    match_path = final.get(verdict.match_key) if verdict.match_key is not None else None
    return Upsert(path, entry.sha256, entry.size, entry.mtime, entry.model, entry.vector, verdict.status,
                  verdict.match_id, verdict.score, verdict.label, match_path, entry.hashes, verdict.signal,
                  verdict.pdq_distance)
