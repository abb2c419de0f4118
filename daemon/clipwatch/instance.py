"""Which instance this is: the name every row it stores carries, and the one daemon per data directory.

Servers that share a table each own the rows of their own name (their files are on their disks). The
name must outlive the host name: in a container the host name is the container's id, new at every
re-creation, and a daemon that took the host name would store every file again under a new name and
flag each as a copy of its own earlier row. So unless `store.instance` is set, the name is kept in
`<daemon.data_dir>/instance`, made once:

- the host name, where the store already holds rows of that name and the data directory has none yet
  (an installation from before this file existed keeps its rows);
- the one instance an SQLite store holds rows of (an SQLite file is this server's own: a container of an
  earlier version, whose name was its id, keeps its rows at the upgrade);
- otherwise `<host name>-<8 hex digits>`: readable, and unique among the servers sharing a table even
  where host names repeat.

The file is written once and never replaced (the first writer wins, so a daemon and a one-shot command
starting together agree). `clipwatch run` also holds `<data_dir>/daemon.lock`: two daemons on one data
directory would be one instance twice, each moving and deleting the other's rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .errors import ClipwatchError, ConfigError

if TYPE_CHECKING:
    from .store import Store

log = structlog.get_logger()
NAME_FILE = "instance"
LOCK_FILE = "daemon.lock"
MAX_NAME = 255  # the instance column is VARCHAR(255)


def settle(data_dir: Path, store: Store) -> str:
    """This data directory's instance name; made and written on first use."""
    path = data_dir / NAME_FILE
    name = read_name(path)
    if name:
        return name
    host = socket.gethostname()
    rows = store.instances()
    if rows.get(host):
        name, why = host, "the store holds rows of this host's name"
    elif store.backend == "sqlite" and len(rows) == 1:
        name, why = next(iter(rows)), "the only instance in this server's SQLite store"
    else:
        name, why = f"{host}-{secrets.token_hex(4)}", "a new installation"
    written = _create(path, name)
    if written == name:
        log.info("instance_named", instance=name, file=str(path), why=why,
                 other_instances=sorted(i for i in rows if i != name)[:20])
    return written


def read_name(path: Path) -> str:
    """The name in `path`, or "" when there is no such file."""
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"store.instance: cannot read the instance name in {path} ({exc})") from None
    if not name or len(name) > MAX_NAME or "\n" in name:
        raise ConfigError(f"store.instance: {path} must hold one name of 1 to {MAX_NAME} characters; write the "
                          "name this server's rows carry back into it (`clipwatch db status` lists them), or set "
                          "store.instance")
    return name


def _create(path: Path, name: str) -> str:
    """Write `name` to `path` unless it exists (atomically: a reader sees no file or the whole name).
    Returns the name the file holds afterwards."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process wrote first: then its name stands
        except FileExistsError:
            return read_name(path)
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(f"store.instance: cannot write the instance name to {path} ({exc}); make "
                          "daemon.data_dir writable, or set store.instance") from None
    return name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def daemon_lock(data_dir: Path) -> Iterator[None]:
    """Held while `clipwatch run` runs; a second daemon on the same data directory is refused.
    The kernel lets go when the process ends, however it ends: no stale lock after a crash."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"daemon.data_dir: cannot create {path} ({exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise ClipwatchError(
                f"another clipwatch daemon (pid {holder}) runs on the data directory {data_dir}: two daemons "
                "there would be one instance twice. Stop it, or give this one its own daemon.data_dir "
                "(one-shot commands such as scan and verdicts may run beside it)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
