"""Recursive watches on the roots (watchdog), translated into `Intake` calls.

inotify (the default on Linux) reports close-after-write, so a file is taken the moment its writer
closes it. `watch.polling = true` uses watchdog's polling observer instead (NFS/SMB mounts, where
inotify sees nothing of other clients' writes); then every new or modified file waits until its size
and mtime hold still for `watch.settle_ms`.
"""

from __future__ import annotations

import os

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
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .changes import Change
from .config import WatchConfig
from .files import PathFilter
from .intake import Intake
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

# Only these reach us: opens, attribute changes and directory "modified" notices are not wanted.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
    DirMovedEvent, DirDeletedEvent,
]


class ChangeHandler(FileSystemEventHandler):
    """Turns watchdog events into intake calls; runs on watchdog's dispatcher thread."""

    def __init__(self, intake: Intake, paths: PathFilter, metrics: Metrics, close_events: bool) -> None:
        self.intake, self.paths, self.metrics = intake, paths, metrics
        self.close_events = close_events  # inotify: a written file waits for its close

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # never let one odd event kill watchdog's dispatcher thread
            log.exception("watch_event_failed", event_type=type(event).__name__)

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.is_directory:
            if event.event_type == "deleted" or (event.event_type == "moved" and not dest):
                self.intake.ready(Change("delete_tree", src))
            return  # files inside a moved directory arrive as their own move/create events
        match event:
            case FileMovedEvent():
                self._moved(src, dest)
            case FileDeletedEvent() if self.paths.accepts(src):
                self.intake.ready(Change("delete", src))
            case FileClosedEvent() if self.paths.accepts(src):
                self._discovered()
                self.intake.ready(Change("upsert", src))
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
            self.intake.ready(Change("move", src, dest))
        elif src_ok and not dest:  # moved out of sight: perhaps into a directory not watched yet
            self.intake.delete_later(src)
        elif src_ok:  # renamed to an ignored name
            self.intake.ready(Change("delete", src))
        elif dest_ok:  # x.tmp -> x.jpg, or moved in from outside: complete, since rename is atomic
            self._discovered()
            self.intake.ready(Change("upsert", dest))

    def _discovered(self) -> None:
        self.metrics.discovered.labels("event").inc()


class Watcher:
    """Owns the observer; `start()` places the watches, `stop()` removes them."""

    def __init__(self, config: WatchConfig, intake: Intake, paths: PathFilter, metrics: Metrics) -> None:
        self.config = config
        self.observer: BaseObserver
        if config.polling:
            self.observer = PollingObserver(timeout=config.poll_interval_ms / 1000)
        else:
            # full events: a file moved in from outside arrives as a move with an empty source, not a create
            self.observer = Observer(generate_full_events=True)  # type: ignore[call-arg]
        close_events = type(self.observer).__name__ == "InotifyObserver"
        self.handler = ChangeHandler(intake, paths, metrics, close_events=close_events)

    @property
    def kind(self) -> str:
        return type(self.observer).__name__

    def start(self) -> None:
        for root in self.config.paths:
            self.observer.schedule(self.handler, root, recursive=True, event_filter=EVENTS)
        self.observer.start()
        log.info("watching", roots=list(self.config.paths), observer=self.kind)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
