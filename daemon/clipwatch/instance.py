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

A server has one identity, whoever asks (docs/operations.md "One server, one identity"):

- A command that would make a **new** name while the store holds rows of another instance of this host for
  files under its own roots is refused before it stores or moves anything (`Refused`, exit 2): it runs
  with another data directory than the daemon's, and would store every file again as a copy of itself.
- A daemon **claims** its name in the registry (`<table>_instances`: host, data directory, pid) and renews
  the claim every `BEAT_S`; a second daemon claiming a name whose daemon is alive elsewhere (another host
  or data directory, seen in the last `STALE_S`) is refused the same way. A daemon that finds its claim
  taken over stops (`beat`); one that stops cleanly gives the claim up (`release`: a re-created container,
  with a new host name, starts at once; after a crash it waits until the claim is `STALE_S` old).
- "This host's instances" (`here`): those the registry places on this host, and, for instances no daemon
  registered, the names this module makes here (the host name, or it followed by 8 hex digits). The judge
  never matches a file with a row of one of them for the same path: that row is the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .errors import ClipwatchError, ConfigError

if TYPE_CHECKING:
    from .store import Store
    from .store.records import Registration

log = structlog.get_logger()
NAME_FILE = "instance"
LOCK_FILE = "daemon.lock"
MAX_NAME = 255  # the instance column is VARCHAR(255)
BEAT_S = 10.0  # a daemon renews its claim this often (from the index sync's loop)
STALE_S = 60.0  # a claim not renewed for this long is a dead daemon's: another may take the name
PEERS_TTL_S = 60.0  # how long the worker trusts its list of this host's other instances


class Refused(ConfigError):
    """This process cannot act as a server's instance: the message says which one holds the files, and how to
    run as it. Exit 2, like every configuration error, and nothing was stored or moved."""


def settle(data_dir: Path, store: Store, roots: Sequence[str] = ()) -> str:
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
        _refuse_a_second_name(store, host, data_dir, roots)
        name, why = f"{host}-{secrets.token_hex(4)}", "a new installation"
    written = _create(path, name)
    if written == name:
        log.info("instance_named", instance=name, file=str(path), why=why,
                 other_instances=sorted(i for i in rows if i != name)[:20])
    return written


def _refuse_a_second_name(store: Store, host: str, data_dir: Path, roots: Sequence[str]) -> None:
    """Refuse to make a new name where an instance of this host already holds rows for files under `roots`."""
    registered = store.registered()
    for name in here(store.instance_names(), registered, host):
        held = [r for r in roots if store.holds_rows_under(name, r)]
        if held:
            raise Refused(_held_message(name, registered.get(name), data_dir, held))


def _held_message(name: str, holder: Registration | None, data_dir: Path, roots: list[str]) -> str:
    where = f"daemon.data_dir {holder.data_dir}" if holder else "a data directory of its own"
    run_as = _owner_of(holder.data_dir) if holder else ""
    command = sudo_command(run_as) if run_as else ""
    how = [f"set daemon.data_dir = \"{holder.data_dir}\" in the configuration given with --config" if holder
           else "give it the configuration whose daemon.data_dir holds that instance's name",
           f"run it as that directory's owner ({command})" if command else "run it as the daemon's user",
           f"or set store.instance = \"{name}\" for this command"]
    return (f"the store already holds rows of instance {name!r} ({where}, on this host) for files under "
            f"{', '.join(roots)}; this command has no instance name in {data_dir} and would take a new one, "
            "store those files again and judge each a copy of itself. Nothing was stored or moved. To act as "
            "that server: " + "; ".join(how))


def sudo_command(user: str) -> str:
    """This very command line, run as `user`: what a refusal tells the operator to type."""
    return shlex.join(["sudo", "-u", user, "clipwatch", *sys.argv[1:]])


def _owner_of(directory: str) -> str:
    try:
        return pwd.getpwuid(os.stat(directory).st_uid).pw_name
    except (OSError, KeyError):
        return ""


def here(names: Sequence[str], registered: dict[str, Registration], host: str) -> list[str]:
    """The instances among `names` (and the registry) that run on this host."""
    made_here = re.compile(re.escape(host) + r"(-[0-9a-f]{8})?")
    found = {n for n, r in registered.items() if r.host == host}
    found |= {n for n in names if n not in registered and made_here.fullmatch(n)}
    return sorted(found)


class Peers:
    """The other instances of this host, for the judge's rule that a file never matches its own row under
    another name. Asked again every PEERS_TTL_S: the registry changes when a daemon starts."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self._names: list[str] = []
        self._asked = -float("inf")

    def names(self) -> list[str]:
        if self.clock() - self._asked >= PEERS_TTL_S:
            found = here(self.store.instance_names(), self.store.registered(), socket.gethostname())
            self._names, self._asked = [n for n in found if n != self.store.instance], self.clock()
        return self._names


def claim(store: Store, data_dir: Path) -> None:
    """Register this daemon as its instance's; `Refused` if that instance's daemon is alive elsewhere."""
    host, here_dir = socket.gethostname(), str(data_dir)

    def may_take(held: Registration) -> bool:
        if held.pid == 0 or held.seen_s > STALE_S:
            return True  # its daemon stopped cleanly, or stopped renewing: gone
        return held.host == host and (held.data_dir == here_dir or not _alive(held.pid))

    holder = store.claim(host, here_dir, os.getpid(), may_take)
    if holder is not None:
        raise Refused(f"instance {store.instance!r} is run by a daemon on host {holder.host!r} (daemon.data_dir "
                      f"{holder.data_dir}, pid {holder.pid}, alive {holder.seen_s:.0f} s ago): two daemons as one "
                      "instance would each move and delete the other's rows. Stop that one, or give this server "
                      "its own instance (another store.instance, or a data directory of its own)")
    log.info("instance_claimed", instance=store.instance, host=host, data_dir=here_dir)


def beat(store: Store, data_dir: Path) -> bool:
    """Renew this daemon's claim; False when another daemon took the name over."""
    return store.beat(socket.gethostname(), str(data_dir), os.getpid())


def release(store: Store, data_dir: Path) -> None:
    """At a clean stop: the name may be claimed at once (a re-created container has another host name)."""
    store.release(socket.gethostname(), str(data_dir), os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
