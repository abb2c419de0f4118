"""What a person does from the review page besides deciding: quarantine a file, release one, undo.

Each is one entry of the history (`<table>_actions`, with who and when), written in the same transaction
as its effect. Files move the way the daemon moves them at ingest (`quarantine.py`): the row and a
journal entry are committed first, then the file is moved, and the journal settles how it ended, so a
crash in between is finished at the next start.

- quarantine: a file of this instance under a root (the flagged one, or the one it matched) goes to
  `quarantine.dir` (its path below its root kept); its row follows it, verdict kept.
- release: a quarantined file goes back where it came from (the history says where; a name taken since
  is refused, nothing replaced), its verdict is dismissed, and the daemon judges it again without that
  match (`rejudge`). A re-judged file is never moved.
- undo: of a dismissal or confirmation, the decision is removed (and the verdicts a dismissal cleared are
  put back, where the row still holds the same bytes and is still ok); of a quarantine, the file goes back
  flagged; of a release, the file goes back into the quarantine and its dismissal is undone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from . import quarantine
from .errors import ClipwatchError
from .files import PathFilter
from .review import decide
from .store import (
    ActionRecord,
    FlaggedRow,
    ForgetDecision,
    JournalMove,
    Op,
    PendingMove,
    RecordAction,
    Rename,
    SetVerdict,
    Store,
)
from .vocab import Action, Decision, Deed, Signal, Status


class Actions:
    def __init__(self, store: Store, paths: PathFilter, quarantine_dir: str, rejudge: Callable[[str], None]) -> None:
        self.store, self.paths, self.quarantine_dir, self.rejudge = store, paths, quarantine_dir, rejudge

    def quarantine(self, row_id: int, by: str) -> str:
        row = self._row(row_id)  # flagged, or the file a flagged one matched ("quarantine the other")
        if not self.paths.root_of(row.path):
            raise ClipwatchError(f"row {row_id} ({row.path}) is not under a watched root (already quarantined?)")
        dest = quarantine.reserve(row.path, self.paths, self.quarantine_dir, set())
        self._move(row, dest, [RecordAction(ActionRecord(Deed.QUARANTINED, row.id, row.path, by, dest))])
        return f"quarantined row {row_id}: {row.path} -> {dest}"

    def release(self, row_id: int, by: str) -> str:
        row = self._row(row_id)
        origin = self._origin(row)
        self._move(row, origin, [])
        dismissal: list[int] = []
        said = decide(self.store, [row_id], Decision.DISMISSED, by, dismissal) if row.status != Status.OK else []
        self.store.apply([RecordAction(ActionRecord(Deed.RELEASED, row.id, row.path, by, origin,
                                                    restore=json.dumps({"dismissal": dismissal[:1]})))])
        self.rejudge(origin)
        return f"released row {row_id}: {row.path} -> {origin}" + (f"; {said[0]}" if said else "")

    def undo(self, action_id: int, by: str) -> str:
        action = self.store.actions_by_id([action_id]).get(action_id)
        if action is None or action.deed == Deed.UNDONE or action.row_id is None:
            raise ClipwatchError(f"history entry {action_id}: nothing to undo")
        done = RecordAction(ActionRecord(Deed.UNDONE, action.row_id, action.path, by, undoes=action.id))
        if action.deed in (Deed.DISMISSED, Deed.CONFIRMED):
            decision = Decision.DISMISSED if action.deed == Deed.DISMISSED else Decision.CONFIRMED
            self.store.apply([ForgetDecision(action.row_id, decision), *self._restored(action), done])
        elif action.deed == Deed.QUARANTINED:
            row = self._row(action.row_id)
            self._move(row, action.path, [done])
        else:  # released: back into the quarantine, the dismissal it made undone
            row = self._row(action.row_id)
            dest = quarantine.reserve(row.path, self.paths, self.quarantine_dir, set())
            extra: list[Op] = []
            for dismissal in self.store.actions_by_id(json.loads(action.restore or "{}").get("dismissal", [])).values():
                extra += [ForgetDecision(row.id, Decision.DISMISSED), *self._restored(dismissal)]
            again = RecordAction(ActionRecord(Deed.QUARANTINED, row.id, row.path, by, dest))
            self._move(row, dest, [*extra, done, again])
        return f"undid history entry {action_id} ({action.deed} row {action.row_id})"

    def _row(self, row_id: int) -> FlaggedRow:
        row = self.store.rows_by_id([row_id]).get(row_id)
        if row is None:
            raise ClipwatchError(f"row {row_id}: no such row")
        if row.instance != self.store.instance:
            raise ClipwatchError(f"row {row_id} belongs to instance {row.instance!r}: its file is on that server")
        return row

    def _origin(self, row: FlaggedRow) -> str:
        if self.paths.root_of(row.path):
            raise ClipwatchError(f"row {row.id} ({row.path}) is not in the quarantine")
        last = self.store.last_quarantine(row.id)
        if last is None or last.dest != row.path:
            raise ClipwatchError(f"row {row.id}: where {row.path} came from was not recorded (quarantined before "
                                 "clipwatch kept a history); move it back by hand")
        if os.path.lexists(last.path):
            raise ClipwatchError(f"{last.path} holds another file now; nothing was moved")
        return last.path

    def _restored(self, action: ActionRecord) -> list[Op]:
        """The verdicts a dismissal cleared, for rows that still hold those bytes and are still ok."""
        wanted = json.loads(action.restore or "[]")
        now = self.store.rows_by_id([w["id"] for w in wanted])
        return [SetVerdict(w["id"], Status(w["status"]), w["match_id"], w["score"], w["label"],
                           Signal(w["signal"]) if w.get("signal") else None, w.get("pdq_distance")) for w in wanted
                if w["id"] in now and now[w["id"]].sha256 == w["sha256"] and now[w["id"]].status == Status.OK]

    def _move(self, row: FlaggedRow, dest: str, done: list[Op]) -> None:
        """The row follows its file to `dest`, then the file moves (journalled); `done` (the history entry,
        what an undo puts back) is written with the journal's end, and only if the file did move. A move
        that fails puts the row back and raises."""
        src = row.path
        if not os.path.isfile(src):
            raise ClipwatchError(f"{src} is not there any more; nothing was moved")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        applied = self.store.apply([Rename(src, dest), JournalMove(src, dest, Action.QUARANTINE, row.sha256)])
        pending = PendingMove(applied.moves[dest], src, dest, Action.QUARANTINE, row.sha256)
        outcome, why = quarantine.complete(pending)
        moved = outcome in (quarantine.Outcome.MOVED, quarantine.Outcome.ALREADY_MOVED)
        self.store.apply([*quarantine.settle(pending, outcome), *(done if moved else [])])
        if not moved:
            raise ClipwatchError(f"moving {src} to {dest} {outcome}{': ' + why if why else ''}; the file stays")
