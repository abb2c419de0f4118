"""Verdicts a person can act on: list them (`clipwatch verdicts`), overrule them (`clipwatch dismiss`),
or say they were right (`clipwatch confirm`).

A decision is stored in the decisions table beside the images table (shared by every instance sharing
the table), with who took it and when, keyed by content: the flagged file's sha256 and the sha256 of the
file it matched, or the reference label it matched. A dismissed pair is never flagged again, by any
daemon, whatever happens to the files (rescans, re-embeds after a model change, moves); a *different*
match can still flag the file. Dismissing a row clears every row flagged for the same pair.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterable, Sequence
from typing import TextIO

from .decisions import Decisions
from .errors import ClipwatchError
from .files import printable
from .store import ActionRecord, DecisionRecord, FlaggedRow, Op, RecordAction, RecordDecision, SetVerdict, Store
from .vocab import Decision, Deed, Signal, Status


def default_decider() -> str:
    """Who takes a decision when --by is not given: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def print_verdicts(rows: Iterable[FlaggedRow], out: TextIO, as_json: bool, limit: int = 0) -> int:
    """Flagged rows, newest first: JSON lines, or a table. Returns how many were printed."""
    shown = 0
    if not as_json:
        print(f"{'id':>8}  {'status':<10}  {'signal':<6}  {'score':>6}  {'pdq':>3}  path  ->  match", file=out)
    for row in rows:
        if limit and shown >= limit:
            break
        shown += 1
        if as_json:
            print(json.dumps({"id": row.id, "path": row.path, "status": row.status, "match_id": row.match_id,
                              "match_path": row.match_path, "score": row.score, "label": row.label,
                              "signal": row.signal, "pdq_distance": row.pdq_distance,
                              "instance": row.instance, "flagged_at": row.updated_at.isoformat()},
                             ensure_ascii=False), file=out)
        else:
            match = f"row {row.match_id} {printable(row.match_path or '?')}" if row.match_id else repr(row.label)
            score = "" if row.score is None else f"{row.score:.4f}"
            bits = "" if row.pdq_distance is None else str(row.pdq_distance)
            print(f"{row.id:>8}  {row.status:<10}  {row.signal or '':<6}  {score:>6}  {bits:>3}  "
                  f"{printable(row.path)}  ->  {match}", file=out)
    return shown


def decide(store: Store, ids: Sequence[int], decision: Decision, by: str,
           recorded: list[int] | None = None) -> list[str]:
    """Record `decision` about each row's verdict, in one transaction. A dismissal clears the verdict of
    every row flagged for the same pair; among those, byte-identical files stay copies of one another (a
    dismissal says "these bytes are not a copy of those", not that twins are not twins): each points at
    the oldest row with its bytes. Returns a line per row saying what changed. Raises
    ClipwatchError, changing nothing, if an id is unknown or not flagged. `recorded` receives the ids of the
    history entries written (one per row)."""
    wanted = list(dict.fromkeys(ids))
    rows = store.rows_by_id(wanted)
    _check(wanted, rows)
    ops: list[Op] = []
    cleared: dict[int, list[int]] = {}  # dismissed row -> the rows its dismissal clears
    for row in (rows[i] for i in wanted):
        other = (row.match_sha256 if row.status == Status.DUPLICATE else row.label) or ""
        ops.append(RecordDecision(DecisionRecord(row.status, row.sha256, other, decision, by, row.score, row.id,
                                                 row.path, row.match_path)))
        if decision == Decision.DISMISSED:
            cleared[row.id] = sorted(set(store.flagged_with(row.status, row.sha256, other)) | {row.id})
    verdicts: dict[int, SetVerdict] = {}
    before: dict[int, FlaggedRow] = {}
    if cleared:
        known = Decisions([*store.decisions(), *(op.decision for op in ops if isinstance(op, RecordDecision))])
        every = sorted({i for c in cleared.values() for i in c})
        verdicts, before = _after_dismissal(store, every, known), store.rows_by_id(every)
    ops += verdicts.values()
    deed = Deed.DISMISSED if decision == Decision.DISMISSED else Deed.CONFIRMED
    ops += [RecordAction(ActionRecord(deed, i, rows[i].path, by, restore=_restore([before[c] for c in cleared[i]])
                                      if i in cleared else None)) for i in wanted]
    applied = store.apply(ops)
    if recorded is not None:
        recorded += applied.actions
    return [_said(rows[i], decision, cleared.get(i, []), verdicts) for i in wanted]


def _restore(rows: Sequence[FlaggedRow]) -> str:
    """What undoing a dismissal puts back: the verdicts it cleared, each with the bytes it was about."""
    return json.dumps([{"id": r.id, "sha256": r.sha256, "status": r.status, "match_id": r.match_id,
                        "score": r.score, "label": r.label, "signal": r.signal, "pdq_distance": r.pdq_distance}
                       for r in rows])


def _after_dismissal(store: Store, cleared: list[int], decisions: Decisions) -> dict[int, SetVerdict]:
    """The verdict of each cleared row: ok, or an exact copy of the oldest row with its bytes."""
    shas = store.shas_of(cleared)
    twins = store.find_by_sha256(sorted(set(shas.values())))
    verdicts = {}
    for row_id in cleared:
        sha = shas[row_id]
        oldest = twins[sha][0].row.id if twins.get(sha) else row_id
        if oldest == row_id or decisions.pair_dismissed(sha, sha):
            verdicts[row_id] = SetVerdict(row_id)
        else:
            verdicts[row_id] = SetVerdict(row_id, Status.DUPLICATE, oldest, 1.0, signal=Signal.SHA256)
    return verdicts


def _said(row: FlaggedRow, decision: Decision, cleared: list[int], verdicts: dict[int, SetVerdict]) -> str:
    what = f"{decision} row {row.id} {printable(row.path)}: {_matched(row)}"
    if decision != Decision.DISMISSED:
        return what
    own = verdicts[row.id]
    what += ("; now ok" if own.status == Status.OK else f"; now a duplicate of row {own.match_id}, which has "
             "the same bytes") + ", and this pair is not flagged again"
    others = [verdicts[i] for i in cleared if i != row.id]
    if others:
        what += " (the same pair, cleared too: " + ", ".join(
            f"row {v.row_id}" + ("" if v.status == Status.OK else f", now a duplicate of row {v.match_id}")
            for v in others) + ")"
    return what


def _check(ids: list[int], rows: dict[int, FlaggedRow]) -> None:
    unknown = [str(i) for i in ids if i not in rows]
    if unknown:
        raise ClipwatchError(f"unknown id {', '.join(unknown)}: no such row (`clipwatch verdicts` lists the "
                             "flagged ones); nothing was changed")
    for i in ids:
        row = rows[i]
        if row.status == Status.OK:
            raise ClipwatchError(f"row {i} ({printable(row.path)}) is not flagged; nothing was changed")
        if row.status == Status.DUPLICATE and row.match_sha256 is None:
            raise ClipwatchError(f"row {i} ({printable(row.path)}) was a duplicate of row {row.match_id}, which no "
                                 "longer exists: the daemon judges it again at its next rescan; nothing was changed")


def _matched(row: FlaggedRow) -> str:
    score = "" if row.score is None else f" (score {row.score:.4f})"
    if row.status == Status.PROHIBITED:
        return f"prohibited, like {row.label!r}{score}"
    return f"duplicate of row {row.match_id} {printable(row.match_path or '?')}{score}"


