"""What flows from the watcher and the scanner to the worker: one `Change` per file system fact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["upsert", "move", "delete", "delete_tree"]
Source = Literal["event", "scan", "rescan"]


@dataclass(frozen=True)
class Change:
    """A file to (re)ingest, a rename, or a deletion, in the order it was observed.

    upsert: `path` is complete and should have a row matching its content.
    move: `path` was renamed to `dest`; the row follows without re-embedding.
    delete: `path` is gone. delete_tree: the directory `path` is gone, with everything below it.
    """

    kind: Kind
    path: str
    dest: str = ""
    source: Source = "event"
    seen_at: float = field(default_factory=time.monotonic, compare=False)
