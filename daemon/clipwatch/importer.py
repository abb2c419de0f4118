"""`clipwatch import`: vectors computed elsewhere, stored and judged like embedded images."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import TextIO

from .files import name_problem
from .logs import get_logger
from .planner import Entry
from .search import BadLine, ImportLine, read_import_lines
from .service import Service
from .vocab import Result, Status

log = get_logger(__name__)


@dataclass
class ImportSummary:
    lines: int = 0
    imported: int = 0
    duplicate: int = 0
    prohibited: int = 0
    rejected: int = 0
    bad: int = 0


def import_file(service: Service, source: str | TextIO) -> ImportSummary:
    assert service.worker is not None and service.embedder.dimension
    summary = ImportSummary()
    stream = open(source, encoding="utf-8") if isinstance(source, str) else source
    try:
        batch: list[Entry] = []
        for line in read_import_lines(stream, service.embedder.dimension):
            summary.lines += 1
            entry = (_entry(line, service.embedder.identity, service.worker.store.instance)
                     if isinstance(line, ImportLine) else line)
            if isinstance(entry, BadLine):
                summary.bad += 1
                print(f"line {entry.number}: {entry.reason}", file=sys.stderr)
                continue
            batch.append(entry)
            if len(batch) == service.config.model.batch_size:
                _flush(service, batch, summary)
        _flush(service, batch, summary)
    finally:
        if isinstance(source, str):
            stream.close()
    return summary


def _entry(line: ImportLine, default_model: str, instance: str) -> Entry | BadLine:
    problem = name_problem(line.path)
    if problem is not None:
        return BadLine(line.number, str(problem))
    size, mtime, sha = 0, 0.0, line.sha256 or ""
    on_disk = os.path.isfile(line.path) and not os.path.islink(line.path)
    if on_disk:  # the file is here: record what a scan would, so a scan finds the row up to date
        st = os.stat(line.path)
        size, mtime = st.st_size, st.st_mtime
        if not sha:
            with open(line.path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
    return Entry(line.number, line.path, sha or no_bytes_key(instance, line.path), size, mtime,
                 line.model or default_model, vector=line.vector, on_disk=on_disk)


def no_bytes_key(instance: str, path: str) -> str:
    """The sha256 column of a row imported without its bytes (no file here, no "sha256" in the line): the
    sha256 of a text naming the row, which no file's bytes have. So the row is never byte-identical to
    another (an empty value would equal every other empty one: every such row an exact copy of the first),
    and decisions about it, keyed by sha256, are its own. Stable: importing the line again keeps the key."""
    return hashlib.sha256(f"clipwatch: imported without bytes\0{instance}\0{path}".encode()).hexdigest()


def _flush(service: Service, batch: list[Entry], summary: ImportSummary) -> None:
    if not batch:
        return
    assert service.worker is not None
    committed = service.worker.import_entries(batch)
    batch.clear()
    if committed is None:
        return
    summary.imported += committed.counts[Result.EMBEDDED]
    summary.rejected += committed.counts[Result.REJECTED]
    summary.duplicate += committed.flagged[Status.DUPLICATE]
    summary.prohibited += committed.flagged[Status.PROHIBITED]
