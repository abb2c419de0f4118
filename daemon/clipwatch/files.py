"""Which paths are images we watch, and reading one safely (no symlinks, no FIFOs, bounded size)."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import FileRejected
from .vocab import Reason


def within(path: str, directory: str) -> bool:
    """`path` is `directory` or below it (by name: no links resolved)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


class PathFilter:
    """Decides whether a path is a watched image: under a root, an allowed extension, no ignored component."""

    def __init__(self, roots: Sequence[str], extensions: Sequence[str], ignore: Sequence[str]) -> None:
        self.roots = tuple(os.path.abspath(r) for r in roots)
        self.extensions = frozenset("." + e.lower().lstrip(".") for e in extensions)
        self.ignore = tuple(ignore)

    def root_of(self, path: str) -> str | None:
        for root in self.roots:
            if within(path, root):
                return root
        return None

    def resolves_inside(self, path: str) -> bool:
        """True if the directory holding `path`, with every symbolic link resolved, is still inside the
        root: a link to a directory elsewhere never makes its files ours."""
        root = self.root_of(path)
        if root is None:
            return False
        real_root = os.path.realpath(root)
        real_dir = os.path.realpath(os.path.dirname(path))
        return within(real_dir, real_root)

    def ignored_name(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)

    def accepts(self, path: str) -> bool:
        root = self.root_of(path)
        if root is None or path == root:
            return False
        if os.path.splitext(path)[1].lower() not in self.extensions:
            return False
        return not any(self.ignored_name(part) for part in os.path.relpath(path, root).split(os.sep))

    def walk(self, root: str) -> Iterator[os.DirEntry[str]]:
        """Every accepted regular file below `root`; ignored directories and symlinks are not entered.
        Each directory's files come oldest first (mtime, then name): a first scan stores the oldest copy of
        a picture first, so it is the original also when its copies fall into later batches."""
        stack = [root]
        while stack:
            files: list[tuple[float, str, os.DirEntry[str]]] = []
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            if not self.ignored_name(entry.name):
                                stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False) and self.accepts(entry.path):
                            files.append((_mtime(entry), entry.name, entry))
            except OSError:
                pass  # a directory removed or unreadable while walking: the watcher reports what follows
            yield from (entry for *_, entry in sorted(files, key=lambda f: f[:2]))


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


@dataclass(frozen=True)
class FileBytes:
    path: str
    data: bytes
    size: int
    mtime: float
    sha256: str
    md5: str = ""  # hash lists (the next issue's banks) carry MD5s


def printable(path: str) -> str:
    """A path as one line of a terminal (a newline in a file name is shown escaped)."""
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


def name_problem(path: str) -> FileRejected | None:
    """Why the store cannot hold this name exactly (bytes that are not UTF-8), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return FileRejected(Reason.BAD_NAME, "the file name is not valid UTF-8; the store keeps names as UTF-8 "
                                             "text, so it is skipped rather than stored under another name")
    return None


def check_name(path: str) -> None:
    """Refuse names a store cannot hold exactly."""
    problem = name_problem(path)
    if problem is not None:
        raise problem


def read_file(path: str, max_bytes: int) -> FileBytes:
    """Read a whole regular file and hash its bytes. Nothing that is not a regular file is ever opened
    (opening a FIFO blocks, opening a device can act on it), and a symbolic link is never followed."""
    check_name(path)
    before = _look(path, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRejected(Reason.NOT_FOUND, "the file disappeared before it could be read") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRejected(Reason.NOT_A_FILE, "it is a symbolic link; links are not followed") from None
        raise FileRejected(Reason.UNREADABLE, f"cannot open it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(st.st_mode):
            raise FileRejected(Reason.NOT_FOUND, "it was replaced while being opened; the new file comes next")
        if st.st_size == 0:
            raise FileRejected(Reason.EMPTY, "the file is empty (0 bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise FileRejected(Reason.UNREADABLE, f"cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileRejected(Reason.TOO_LARGE, f"it grew over watch.max_file_bytes = {max_bytes} while being read")
    return FileBytes(path, data, len(data), st.st_mtime, hashlib.sha256(data).hexdigest(),
                     hashlib.md5(data).hexdigest())


def _look(path: str, max_bytes: int) -> os.stat_result:
    """What is at `path`, without opening it: refused unless a regular file within the size limit."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileRejected(Reason.NOT_FOUND, "the file disappeared before it could be read") from None
    except OSError as exc:
        raise FileRejected(Reason.UNREADABLE, f"cannot look at it: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise FileRejected(Reason.NOT_A_FILE, "it is a symbolic link; links are not followed")
    if not stat.S_ISREG(st.st_mode):
        raise FileRejected(Reason.NOT_A_FILE, "it is not a regular file (a directory, FIFO, socket or device)")
    if st.st_size > max_bytes:
        raise FileRejected(Reason.TOO_LARGE, f"{st.st_size} bytes is over watch.max_file_bytes = {max_bytes}")
    return st
