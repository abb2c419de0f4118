"""Decisions people took about verdicts, as the judge asks about them: "was this pair dismissed?"

A decision is keyed by content, never by row or path: the sha256 of the flagged file and the sha256 of
the file it matched (a duplicate), or the reference's label (prohibited). So a dismissed pair stays
dismissed through rescans, re-embeds after a model change, renames, and on every server sharing the
table. Decisions are kept as a history (who, when); the latest decision about a pair is the one that
counts, so a confirm after a dismiss flags the pair again.

The daemon holds all of them in memory (people make them one by one: thousands, not millions) and
re-reads the table when its row count or largest id changes (`refresh`, every index sync round).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from .store import DecisionRecord, Store
from .vocab import Decision, Status


@dataclass(frozen=True)
class _Snapshot:
    pairs: frozenset[tuple[str, str]] = frozenset()  # dismissed duplicate pairs, each (smaller, larger) sha256
    labels: dict[str, frozenset[str]] = field(default_factory=dict)  # sha256 -> dismissed reference labels
    involved: frozenset[str] = frozenset()  # every sha256 in a dismissed duplicate pair


class Decisions:
    """Thread-safe: the sync thread refreshes it while the worker reads (a snapshot swapped whole)."""

    def __init__(self, records: Iterable[DecisionRecord] = ()) -> None:
        self._snapshot = _snapshot(records)
        self._version = (-1, -1)
        self._lock = threading.Lock()

    def refresh(self, store: Store) -> bool:
        """Re-read the decisions if the table changed. True if it did."""
        with self._lock:
            version = store.decisions_version()
            if version == self._version:
                return False
            self._snapshot, self._version = _snapshot(store.decisions()), version
            return True

    def __len__(self) -> int:
        s = self._snapshot
        return len(s.pairs) + sum(len(labels) for labels in s.labels.values())

    def pair_dismissed(self, a: str, b: str) -> bool:
        return _pair(a, b) in self._snapshot.pairs

    def involves(self, sha256: str) -> bool:
        """True if some pair with this file's bytes was dismissed: its candidates need a closer look."""
        return sha256 in self._snapshot.involved

    def labels_dismissed(self, sha256: str) -> frozenset[str]:
        return self._snapshot.labels.get(sha256, frozenset())


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def latest(records: Iterable[DecisionRecord]) -> dict[tuple[Status, str, str], DecisionRecord]:
    """The decision that counts for each pair (kind, and the two sha256 in either order, or sha256 and
    label): records come oldest first, and a later decision about the same pair overrules."""
    counted: dict[tuple[Status, str, str], DecisionRecord] = {}
    for r in records:
        counted[(r.kind, *_pair(r.sha256, r.other)) if r.kind == Status.DUPLICATE else (r.kind, r.sha256, r.other)] = r
    return counted


def _snapshot(records: Iterable[DecisionRecord]) -> _Snapshot:
    counted = {key: r.decision for key, r in latest(records).items()}
    pairs = frozenset((a, b) for (kind, a, b), d in counted.items()
                      if kind == Status.DUPLICATE and d == Decision.DISMISSED)
    labels: dict[str, set[str]] = {}
    for (kind, sha, label), d in counted.items():
        if kind == Status.PROHIBITED and d == Decision.DISMISSED:
            labels.setdefault(sha, set()).add(label)
    return _Snapshot(pairs, {s: frozenset(v) for s, v in labels.items()}, frozenset(x for p in pairs for x in p))
