"""Moving a file out of the watched tree into the quarantine directory, keeping its path below its root."""

from __future__ import annotations

import errno
import os
import shutil

from .files import PathFilter


def quarantine_file(path: str, paths: PathFilter, quarantine_dir: str) -> str:
    """Move `path` to quarantine_dir/<its path relative to its root>; returns the new path.

    An existing file of that name is never overwritten: a numeric suffix is added (`x.jpg` -> `x.1.jpg`).
    Raises OSError if the file cannot be moved (it is then left where it was)."""
    root = paths.root_of(path)
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    dest = os.path.join(quarantine_dir, relative)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    stem, ext = os.path.splitext(dest)
    n = 0
    while os.path.lexists(dest):
        n += 1
        dest = f"{stem}.{n}{ext}"
    try:
        os.rename(path, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # on another file system: copy, then remove
            raise
        shutil.move(path, dest)
    return dest
