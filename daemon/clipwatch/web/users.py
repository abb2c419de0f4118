"""The users of the review pages and the search API: an htpasswd file of `name:bcrypt-hash` lines.

The format is Apache's (`htpasswd -B` writes it) and the hash is bcrypt, as in node_exporter's web
config: `bcrypt` (pyca) checks it. The file is re-read when it changes (its mtime, size or inode), so
adding or removing a user needs no restart; a user removed from the file is logged out at their next
request. Lines that are not `name:$2a|b|y$...` are skipped with a warning naming the line, never the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path

import bcrypt
from limits import RateLimitItemPerMinute, storage, strategies

from ..errors import ConfigError
from ..logs import get_logger

log = get_logger(__name__)
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; bcrypt 5 refuses longer passwords instead of cutting them
ROUNDS = 12


class Users:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._hashes: dict[str, bytes] = {}
        self._key = secrets.token_bytes(32)  # keys the memo of checked passwords; never leaves the process
        self._checked: dict[str, bytes] = {}  # name -> HMAC of the password last accepted, for this file

    def names(self) -> frozenset[str]:
        self._refresh()
        return frozenset(self._hashes)

    def check(self, name: str, password: str) -> bool:
        """True when `password` is `name`'s. A bcrypt check costs ~0.2 s by design: a password accepted
        once is remembered (as an HMAC under a per-process key) until the file changes, so basic-auth
        clients are not slowed on every request; a wrong one always pays the full check."""
        self._refresh()
        stored = self._hashes.get(name)
        given = password.encode()
        memo = hmac.new(self._key, given, hashlib.sha256).digest()
        if stored is None or len(given) > MAX_PASSWORD_BYTES:
            bcrypt.checkpw(b"x", DUMMY)  # the same time whether the name exists or not
            return False
        if hmac.compare_digest(self._checked.get(name, b""), memo):
            return True
        ok = bcrypt.checkpw(given, stored)
        if ok:
            self._checked[name] = memo
        return ok

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp and (stamp is not None or not self._hashes):
                return
            self._stamp, self._checked = stamp, {}
            self._hashes = self._read() if stamp is not None else {}
            log.info("users_loaded", users_file=self.path, users=len(self._hashes))

    def _read(self) -> dict[str, bytes]:
        hashes: dict[str, bytes] = {}
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("users_file_unreadable", users_file=self.path, error=type(exc).__name__,
                      action="nobody can log in until it can be read")
            return {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, hashed = line.strip().partition(":")
            if not NAME.match(name) or not BCRYPT.match(hashed):
                log.warning("users_file_line_skipped", users_file=self.path, line=number,
                            why="expected NAME:BCRYPT-HASH (htpasswd -B, or clipwatch user add)")
                continue
            hashes[name] = hashed.encode()
        return hashes


DUMMY = bcrypt.hashpw(b"not a password", bcrypt.gensalt(4))


def hash_password(password: str) -> str:
    given = password.encode()
    if not given:
        raise ConfigError("the password is empty")
    if len(given) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"the password is longer than bcrypt's {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(given, bcrypt.gensalt(ROUNDS)).decode()


def set_user(path: str, name: str, password: str) -> bool:
    """Add `name` or replace their password, keeping every other line; the file is replaced atomically and
    readable only by its owner. Returns True when the user existed."""
    if not NAME.match(name):
        raise ConfigError(f"user name {name!r}: expected 1 to 64 letters, digits, or . _ @ -")
    line = f"{name}:{hash_password(password)}"
    target = Path(path)
    try:
        lines = target.read_text(encoding="utf-8").splitlines() if target.exists() else []
    except OSError as exc:
        raise ConfigError(f"http.users_file: cannot read {path!r} ({exc.strerror})") from None
    existed = any(existing.partition(":")[0] == name for existing in lines)
    lines = [existing for existing in lines if existing.partition(":")[0] != name] + [line]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(f"http.users_file: cannot write {path!r} ({exc.strerror})") from None
    return existed


class LoginThrottle:
    """Failed logins slow down nobody but their author: at most `PER_NAME` failures per name from one
    address, and `PER_ADDRESS` from one address, in any 10 minutes (a moving window, `limits`' in-memory
    storage); beyond, that client's logins are refused (429) until the window moves. Keyed by address and
    name, so a stranger cannot lock a user out from their own address."""

    PER_NAME, PER_ADDRESS = 5, 20

    def __init__(self) -> None:
        self._limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self._per_name = RateLimitItemPerMinute(self.PER_NAME, 10)
        self._per_address = RateLimitItemPerMinute(self.PER_ADDRESS, 10)

    def allowed(self, address: str, name: str) -> bool:
        return (self._limiter.test(self._per_name, address, name)
                and self._limiter.test(self._per_address, address))

    def failed(self, address: str, name: str) -> None:
        self._limiter.hit(self._per_name, address, name)
        self._limiter.hit(self._per_address, address)
