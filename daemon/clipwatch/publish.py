"""The publish gate: with `watch.publish_dir` set, the watched roots are *incoming* directories, and a file
becomes public only once it passed the checks.

Where a file goes, decided by the committer after its batch is judged:

- passed (status `ok`, or a verdict whose action is `flag`): into the publish directory, at its path
  below its incoming root (one root), or below `<publish_dir>/<the root's own name>/` (several roots,
  whose names must differ: checked at start);
- prohibited or duplicate with action `quarantine`/`reject`: the quarantine, as without a publish gate;
- refused (broken, unreadable): stays in incoming (or goes to `errors.quarantine_dir`), as without one.

A file is published the way the quarantine moves files (`quarantine.py`): its row is written at its
published path and the move journalled in the batch's transaction; the move (a hard link then an unlink,
or across file systems a copy, fsync, link into place, unlink) comes after the commit, and a crash in
between is finished at the next start. The name in the publish directory is never overwritten: when it
holds another file, this one stays in incoming with its row and verdict, refused with the reason
`publish_name_taken` (counted, logged), and is published at the first rescan after the name is free.

The publish directory itself is a root like any other (watched, reconciled): a file deleted or moved
there updates its row; a file put there by other means is ingested and judged, but never moved.

A file in incoming is *waiting* until it is published, quarantined or refused: a rescan takes every
file of incoming again, also one whose row is current (a publish that failed, or rows made before the
gate was turned on), and `Census` counts the waiting files and the age of the oldest.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from .files import PathFilter, within
from .intake import Intake, signature
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)
ECHO_S = 30.0  # how long the watcher's events of a move clipwatch made are recognised as its own
CENSUS_MIN_S = 5.0  # the incoming directories are counted this often at most...
CENSUS_SHARE = 10  # ...and at most a tenth of the time (a large backlog makes the walk slow)


class NameTaken(Exception):
    def __init__(self, dest: str) -> None:
        super().__init__(f"{dest!r} already holds another file; nothing is overwritten")
        self.dest = dest


class Gate:
    """Which files are incoming and where each is published. Disabled (`enabled` False) without a publish
    directory: then nothing is incoming."""

    def __init__(self, incoming: Sequence[str], publish_dir: str) -> None:
        self.incoming = tuple(os.path.abspath(r) for r in incoming) if publish_dir else ()
        self.publish_dir = os.path.abspath(publish_dir) if publish_dir else ""

    @property
    def enabled(self) -> bool:
        return bool(self.publish_dir)

    def root_of(self, path: str) -> str | None:
        """The incoming directory holding the file `path`, if any."""
        return next((r for r in self.incoming if within(path, r)), None)

    def is_published(self, path: str) -> bool:
        """Under the publish directory (a file there is never moved by clipwatch)."""
        return bool(self.publish_dir) and within(path, self.publish_dir)

    def target(self, path: str) -> str:
        """Where a file of an incoming root is published."""
        root = self.root_of(path)
        if root is None:
            raise ValueError(f"{path!r} is not in an incoming directory")
        relative = os.path.relpath(path, root)
        if len(self.incoming) > 1:
            relative = os.path.join(os.path.basename(root.rstrip(os.sep)), relative)
        return os.path.join(self.publish_dir, relative)

    def reserve(self, path: str, taken: set[str]) -> str:
        """The published name of `path`, its directories made; NameTaken if a file (or an earlier file of
        the same batch) has it. Raises OSError if the directories cannot be made."""
        dest = self.target(path)
        if dest in taken or os.path.lexists(dest):
            raise NameTaken(dest)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        taken.add(dest)
        return dest


class Echoes:
    """The watcher's events about files clipwatch itself moved, recognised so that they are dropped
    (otherwise each published file would be read and decoded a second time, only to find its row current).

    An event is an echo only while what it is about is still what the move left: nothing at the source,
    the same size and mtime at the destination. A new upload under the same name is never taken for one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: dict[str, tuple[float, tuple[int, int] | None]] = {}

    def expect(self, src: str, dest: str) -> None:
        """Called just before moving `src` to `dest` (the move keeps size and mtime)."""
        now = time.monotonic()
        left = signature(src)
        with self._lock:
            for path in [p for p, (until, _) in self._expected.items() if until < now]:
                del self._expected[path]
            self._expected[src] = (now + ECHO_S, None)
            self._expected[dest] = (now + ECHO_S, left)

    def echo(self, *paths: str) -> bool:
        """True if every one of `paths` is as one of our moves left it."""
        now = time.monotonic()
        with self._lock:
            wanted = [self._expected.get(p) for p in paths]
        return all(w is not None and w[0] >= now and signature(p) == w[1] for p, w in zip(paths, wanted, strict=True))


class Census:
    """Counts the files waiting in the incoming directories, and the age of the oldest (from its ctime: the
    moment it was written or renamed into incoming, so a wait while the daemon was down counts too).
    Files the worker refused and that have not changed since are counted apart: they wait for a person."""

    def __init__(self, gate: Gate, paths: PathFilter, intake: Intake, metrics: Metrics) -> None:
        self.gate, self.paths, self.intake, self.metrics = gate, paths, intake, metrics

    def count(self) -> tuple[int, int, float]:
        """(waiting, refused, age in seconds of the oldest waiting file)."""
        waiting = refused = 0
        oldest = time.time()
        for root in self.gate.incoming:
            for entry in self.paths.walk(root):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # published (or removed) while walking
                if self.intake.refused_unchanged(entry.path, st.st_size, st.st_mtime_ns):
                    refused += 1
                else:
                    waiting += 1
                    oldest = min(oldest, st.st_ctime)
        return waiting, refused, max(0.0, time.time() - oldest) if waiting else 0.0

    def run(self, stop: threading.Event) -> None:
        while True:
            started = time.monotonic()
            try:
                waiting, refused, oldest = self.count()
                self.metrics.incoming.labels("waiting").set(waiting)
                self.metrics.incoming.labels("refused").set(refused)
                self.metrics.incoming_oldest.set(oldest)
            except Exception:
                log.exception("incoming_census_failed")
            if stop.wait(max(CENSUS_MIN_S, CENSUS_SHARE * (time.monotonic() - started))):
                return
