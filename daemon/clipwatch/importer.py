"""`clipwatch import`: vectors computed elsewhere, stored and judged like embedded images."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import TextIO

from .errors import FileRejected
from .files import check_name
from .logs import get_logger
from .search import BadLine, ImportLine, read_import_lines
from .service import Service
from .worker import Item

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
    stream = open(source, encoding="utf-8") if isinstance(source, str) else source  # noqa: SIM115
    try:
        batch: list[Item] = []
        for line in read_import_lines(stream, service.embedder.dimension):
            summary.lines += 1
            item = _item(line, service.embedder.identity) if isinstance(line, ImportLine) else line
            if isinstance(item, BadLine):
                summary.bad += 1
                print(f"line {item.number}: {item.reason}", file=sys.stderr)
                continue
            batch.append(item)
            if len(batch) == service.config.model.batch_size:
                _flush(service, batch, summary)
        _flush(service, batch, summary)
    finally:
        if isinstance(source, str):
            stream.close()
    return summary


def _item(line: ImportLine, default_model: str) -> Item | BadLine:
    try:
        check_name(line.path)
    except FileRejected as exc:
        return BadLine(line.number, str(exc))
    size, mtime, sha = 0, 0.0, line.sha256 or ""
    on_disk = os.path.isfile(line.path) and not os.path.islink(line.path)
    if on_disk:  # the file is here: record what a scan would, so a scan finds the row up to date
        st = os.stat(line.path)
        size, mtime = st.st_size, st.st_mtime
        if not sha:
            with open(line.path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
    return Item(line.path, sha, size, mtime, line.model or default_model, vector=line.vector, on_disk=on_disk)


def _flush(service: Service, batch: list[Item], summary: ImportSummary) -> None:
    if not batch:
        return
    assert service.worker is not None
    plan = service.worker.import_vectors(list(batch))
    summary.imported += plan.counts["embedded"]
    summary.rejected += plan.counts["rejected"]
    for item in batch:
        summary.duplicate += item.verdict.status == "duplicate"
        summary.prohibited += item.verdict.status == "prohibited"
    batch.clear()
