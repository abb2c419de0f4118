"""Which user a command runs as: the owner of the data directory, whoever started it.

A server's data directory holds what only its daemon's user may need to replace: the instance name, the
precision and OpenVINO caches, the bank snapshots, the thumbnails, the default quarantine. A command run by
root there would leave root's files behind, which the daemon (running as its own user, `UMask=0077`) could
then no longer read or write. So every command that uses the data directory acts as its owner:

- run by the owner (the daemon; `sudo -u clipwatch clipwatch ...`): nothing changes;
- run by root: once the configuration and the secrets it names are read (the password file may be
  root's only, as /etc/clipwatch/db-password is), the process takes the owner's user, groups (from
  /etc/group), home and a umask of 077, before it opens the store or anything in the data directory;
- run by anyone else: refused (`Refused`, exit 2), naming the `sudo -u` command to use.

A data directory that does not exist yet is made by whoever runs first (under systemd: the unit's
`StateDirectory=`, owned by the service's user). `clipwatch user add` writes `http.users_file` only and
runs as it was started.
"""

from __future__ import annotations

import dataclasses
import os
import pwd

from .config import Config, Secret
from .instance import Refused, sudo_command
from .logs import get_logger

log = get_logger(__name__)


def become_owner(config: Config) -> Config:
    """The configuration to go on with, with this process now running as the data directory's owner."""
    try:
        uid = os.stat(config.data_dir).st_uid
    except FileNotFoundError:
        return config
    except OSError as exc:
        raise Refused(f"daemon.data_dir: cannot look at {config.data_dir} ({exc.strerror})") from None
    if uid == os.geteuid():
        return config
    try:
        owner = pwd.getpwuid(uid)
    except KeyError:
        raise Refused(f"daemon.data_dir {config.data_dir} belongs to uid {uid}, which names no user here: give it "
                      "to the daemon's user (chown -R)") from None
    if os.geteuid() != 0:
        command = sudo_command(owner.pw_name)
        raise Refused(f"daemon.data_dir {config.data_dir} belongs to {owner.pw_name!r}, the daemon's user: run "
                      f"this as that user, so that what it writes there stays the daemon's: {command}")
    config = _secrets_read(config)
    os.initgroups(owner.pw_name, owner.pw_gid)
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    os.umask(0o077)
    os.environ.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    log.info("running_as", user=owner.pw_name, uid=owner.pw_uid, data_dir=str(config.data_dir),
             why="the data directory's owner: what this command writes there stays the daemon's")
    return config


def _secrets_read(config: Config) -> Config:
    """The store's password read now, while root may still read its file."""
    if config.store_url.scheme == "sqlite" or not (config.store.password_file or config.store.password):
        return config
    store = dataclasses.replace(config.store, password=Secret(config.store_password), password_file="")
    return dataclasses.replace(config, store=store)
