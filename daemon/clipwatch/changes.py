"""What flows from the watcher and the scanner to the worker: one `Change` per file system fact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .vocab import ChangeKind, Source


@dataclass(frozen=True)
class Change:
    """A file to (re)ingest, a rename, a deletion or a verdict to redo, in the order it was observed.

    upsert: `path` is complete and should have a row matching its content.
    move: `path` was renamed to `dest`; the row follows without re-embedding.
    delete: `path` is gone. delete_tree: the directory `path` is gone, with everything below it.
    rejudge: the row at `path` was a duplicate of a row that is gone: judge its stored vector again.
    """

    kind: ChangeKind
    path: str
    dest: str = ""
    source: Source = Source.EVENT
    seen_at: float = field(default_factory=time.monotonic, compare=False)
