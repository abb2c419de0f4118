"""Recursive watches on the roots (watchdog), translated into `Intake` calls.

inotify (the default on Linux) reports close-after-write, so a file is taken the moment its writer
closes it. `watch.polling = true` uses watchdog's polling observer instead (NFS/SMB mounts, where
inotify sees nothing of other clients' writes); then every new or modified file waits until its size
and mtime hold still for `watch.settle_ms`.
"""

from __future__ import annotations

import errno
import os
import stat

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from .changes import Change
from .config import WatchConfig
from .files import PathFilter
from .intake import Intake
from .logs import get_logger
from .metrics import Metrics
from .publish import Echoes
from .vocab import ChangeKind, Reason, Source, Stage

log = get_logger(__name__)

# Only these reach us: opens, attribute changes and directory "modified" notices are not wanted.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
    DirMovedEvent, DirDeletedEvent,
]


class ChangeHandler(FileSystemEventHandler):
    """Turns watchdog events into intake calls; runs on watchdog's dispatcher thread."""

    def __init__(self, intake: Intake, paths: PathFilter, metrics: Metrics, close_events: bool,
                 echoes: Echoes | None = None) -> None:
        self.intake, self.paths, self.metrics = intake, paths, metrics
        self.close_events = close_events  # inotify: a written file waits for its close
        self.echoes = echoes or Echoes()  # events of clipwatch's own moves (publish.py): dropped

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # never let one odd event kill watchdog's dispatcher thread
            log.exception("watch_event_failed", event_type=type(event).__name__)

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.is_directory:
            gone = event.event_type == "deleted" or (event.event_type == "moved" and not dest)
            if gone and src not in self.paths.roots:  # a root that vanishes keeps its rows: see Watcher
                self.intake.ready(Change(ChangeKind.DELETE_TREE, src))
            return  # files inside a moved directory arrive as their own move/create events
        if self.echoes.echo(*(p for p in (src, dest) if p)):
            return
        match event:
            case FileMovedEvent():
                self._moved(src, dest)
            case FileDeletedEvent() if self.paths.accepts(src):
                self.intake.ready(Change(ChangeKind.DELETE, src))
            case FileClosedEvent() if self.paths.accepts(src):
                self._discovered()
                self.intake.ready(Change(ChangeKind.UPSERT, src))
            case FileModifiedEvent() if self.paths.accepts(src):
                if self.close_events:
                    self.intake.wait_for_close(src)
                else:
                    self.intake.wait_for_settle(src)
            case FileCreatedEvent() if self.paths.accepts(src):
                self._discovered()
                self.intake.wait_for_settle(src)  # may have been linked or moved in whole: no close will come

    def _moved(self, src: str, dest: str) -> None:
        src_ok = bool(src) and self.paths.accepts(src)
        dest_ok = bool(dest) and self.paths.accepts(dest)
        if src_ok and dest_ok:
            self.intake.ready(Change(ChangeKind.MOVE, src, dest))
        elif src_ok and not dest:  # moved out of sight: perhaps into a directory not watched yet
            self.intake.delete_later(src)
        elif src_ok:  # renamed to an ignored name
            self.intake.ready(Change(ChangeKind.DELETE, src))
        elif dest_ok:  # x.tmp -> x.jpg, or moved in from outside: complete, since rename is atomic
            self._discovered()
            self.intake.ready(Change(ChangeKind.UPSERT, dest))

    def _discovered(self) -> None:
        self.metrics.discovered.labels(Source.EVENT).inc()


class Watcher:
    """Owns the observer; `start()` places the watches, `stop()` removes them.

    A root that disappears (unmounted, deleted) loses its watch, and its rows are kept; `ensure_watches()`,
    called by the rescan loop, puts the watch back once the directory is there again. If the kernel's
    inotify limits are reached, the watcher says so and falls back to polling rather than miss files."""

    def __init__(self, config: WatchConfig, intake: Intake, paths: PathFilter, metrics: Metrics,
                 echoes: Echoes | None = None) -> None:
        self.config, self.intake, self.paths, self.metrics = config, intake, paths, metrics
        self.roots = paths.roots  # the watch.paths, and the publish directory when there is one
        self.echoes = echoes
        self.observer = self._make_observer(config.polling)
        self._watches: dict[str, tuple[ObservedWatch, tuple[int, int] | None]] = {}

    def _make_observer(self, polling: bool) -> BaseObserver:
        observer: BaseObserver
        if polling:
            observer = PollingObserver(timeout=self.config.poll_interval_ms / 1000)
        else:
            # full events: a file moved in from outside arrives as a move with an empty source, not a create
            observer = Observer(generate_full_events=True)  # type: ignore[call-arg]
        close_events = type(observer).__name__ == "InotifyObserver"
        self.handler = ChangeHandler(self.intake, self.paths, self.metrics, close_events=close_events,
                                     echoes=self.echoes)
        return observer

    @property
    def kind(self) -> str:
        return type(self.observer).__name__

    def start(self) -> None:
        try:
            self._schedule_all()
            self.observer.start()
        except OSError as exc:
            if not _inotify_limit(exc) or self.kind == "PollingObserver":
                raise
            self._fall_back_to_polling(exc)
        log.info("watching", roots=list(self.roots), observer=self.kind)

    def _fall_back_to_polling(self, exc: OSError) -> None:
        log.error("inotify_limit", error=str(exc), action="falling back to polling",
                  fix="raise fs.inotify.max_user_watches / max_user_instances (sysctl), or set watch.polling = true")
        self.metrics.error(Stage.WATCH, Reason.INOTIFY_LIMIT)
        try:
            self.observer.stop()
        except RuntimeError:
            pass  # never started
        self.observer = self._make_observer(polling=True)
        self._watches.clear()
        self._schedule_all()
        self.observer.start()

    def _schedule_all(self) -> None:
        for root in self.roots:
            if os.path.isdir(root):
                self._schedule(root)

    def _schedule(self, root: str) -> None:
        identity = _identity(root)
        self._watches[root] = (self.observer.schedule(self.handler, root, recursive=True, event_filter=EVENTS),
                               identity)

    def alive(self) -> bool:
        return self.observer.is_alive()

    def ensure_watches(self) -> list[str]:
        """Drop the watch of a root that is gone (a watch follows its directory wherever it was moved),
        and watch again every root that is back. Returns the roots watched again."""
        alive = {e.watch.path for e in list(self.observer.emitters) if e.is_alive()}
        restored = []
        for root in self.roots:
            current = _identity(root)
            watch = self._watches.get(root)
            if watch is not None and (current != watch[1] or root not in alive):
                self._watches.pop(root)
                try:
                    self.observer.unschedule(watch[0])
                except (KeyError, OSError):
                    pass
            if current is None or root in self._watches:
                continue
            try:
                self._schedule(root)
            except OSError as exc:
                if _inotify_limit(exc) and self.kind != "PollingObserver":
                    self._fall_back_to_polling(exc)  # watches every root again, polling
                    return list(self.roots)
                log.error("watch_failed", root=root, error=str(exc))
                continue
            log.info("root_watched_again", root=root)
            restored.append(root)
        return restored

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


def _identity(directory: str) -> tuple[int, int] | None:
    """Which directory is there now (device, inode), or None if none is."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _inotify_limit(exc: OSError) -> bool:
    """ENOSPC: fs.inotify.max_user_watches reached; EMFILE: max_user_instances reached."""
    return exc.errno in (errno.ENOSPC, errno.EMFILE)
