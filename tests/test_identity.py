"""One server, one identity (issue 30): every clipwatch command on a server acts as the server's instance, whoever
runs it; where a command cannot tell, it refuses and nothing moves; a file never matches its own row.

The scenario tests run a real `clipwatch run` as a real unprivileged user (`clipwatch-test`, made with useradd),
in the environment the systemd unit gives it ($STATE_DIRECTORY, JSON logs, the password as a file), and the
operator's commands as root with root's own environment. The server's files live in a directory of their own
under /tmp (mode 0755, removed afterwards). The interpreter and the package lie below directories only root
may enter here (/root holds pyenv's Python): those get a traverse-only ACL entry for that one user
(`setfacl -m u:clipwatch-test:x`), left in place (concurrent workers share them).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import clipwatch
from clipwatch import instance
from clipwatch.config_loader import load_config
from clipwatch.errors import ConfigError
from clipwatch.instance import NAME_FILE, Refused
from clipwatch.store import Store, open_store
from conftest import Daemon, all_verdicts, clipwatch_command, wait_until

USER = "clipwatch-test"
PHOTOS = ("anne_helene.jpg", "blackie.jpg", "cold_water.jpg", "skagen.jpg")


def as_root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a user and run the daemon as it (CI runs as root)")


def service_user() -> pwd.struct_passwd:
    as_root_only()
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                              capture_output=True, text=True)
        if made.returncode not in (0, 9):  # 9: made meanwhile by the other worker
            pytest.fail(f"useradd {USER}: {made.stderr}")
        return pwd.getpwnam(USER)


def reachable(user: str, *paths: Path) -> None:
    """Let `user` walk down to each path (x on every directory above it that others may not enter)."""
    for path in paths:
        for directory in [*reversed(path.resolve().parents), path.resolve()]:
            if directory.is_dir() and not directory.stat().st_mode & stat.S_IXOTH:
                subprocess.run(["setfacl", "-m", f"u:{user}:x", str(directory)], check=True)


def give(user: pwd.struct_passwd, *paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        for p in [path, *path.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)


def photos_in(photos: Path, root: Path, names: tuple[str, ...] = PHOTOS) -> None:
    for name in names:
        (root / name).write_bytes((photos / name).read_bytes())


@pytest.fixture
def server(store_url: str, table: str, model_dir: Path, photos: Path):  # type: ignore[no-untyped-def]
    """A server as the docs install it: a configuration file naming the data directory, the service's user
    owning it and the uploads, copies moved to the quarantine (the README's safe shape)."""
    user = service_user()
    # Not below pytest's tmp_path: pytest takes group and other bits off /tmp/pytest-of-root whenever a session
    # starts, which also masks an ACL entry given there.
    base = Path(tempfile.mkdtemp(prefix="clipwatch-identity-"))
    base.chmod(0o755)
    uploads, data, banks, creds = (base / n for n in ("uploads", "data", "banks", "credentials"))
    for d in (uploads, banks, creds):
        d.mkdir()
    photos_in(photos, uploads)
    model = base / "model"  # the service's own copy: the session's model files are root's only
    shutil.copytree(model_dir, model)
    (creds / "db-password").write_text("\n")  # the test servers' root has no password
    config = base / "clipwatch.toml"
    url = "" if store_url.startswith("sqlite") else f'url = "{store_url}"\n'  # SQLite: the server's own, in data_dir
    config.write_text(f'''[watch]\npaths = ["{uploads}"]\nsettle_ms = 100
[model]\nname = "{model}"\ndevice = "cpu"\nmax_wait_ms = 50
[store]\n{url}table = "{table}"
[duplicates]\nactions = {{sha256 = "quarantine", pdq = "quarantine"}}
[prohibited]\nbank_dir = "{banks}"
[metrics]\nlisten = "127.0.0.1:0"
[daemon]\ndata_dir = "{data}"
''')
    give(user, uploads, data, creds, model)
    reachable(USER, Path(os.path.realpath(sys.executable)), Path(clipwatch.__file__).parent)
    yield user, config, uploads, data, creds
    shutil.rmtree(base, ignore_errors=True)


def unit_env(data: Path, creds: Path) -> dict[str, str]:
    """What systemd gives the service (systemd/clipwatch.service), and nothing of this shell's clipwatch setup."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLIPWATCH_")}
    return {**base, "STATE_DIRECTORY": str(data), "HOME": str(data), "CLIPWATCH_LOG__FORMAT": "json",
            "CLIPWATCH_STORE__PASSWORD_FILE": str(creds / "db-password")}


def operator(config: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command from root's shell: root's own home, no $STATE_DIRECTORY, only --config in common."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPWATCH_") and k != "STATE_DIRECTORY"}
    return subprocess.run(clipwatch_command(*args, "--config", str(config)), env={**env, "HOME": str(home)},
                          capture_output=True, text=True, timeout=180)


@contextlib.contextmanager
def service(user: pwd.struct_passwd, env: dict[str, str], run_config: Path, config: Path,
            data: Path) -> Iterator[tuple[Daemon, Store, str]]:
    """The daemon running as `user` with `run_config`, once it has stored every photo: (daemon, a reader of the
    store, the service's instance name). It must stop cleanly (exit 0) at the end."""
    daemon = Daemon(env, clipwatch_command("run", "--config", str(run_config)), user=user)
    try:
        wait_until(lambda: daemon.saw("running"), timeout=120)
        reader = open_store(load_config(config, env={"CLIPWATCH_STORE__INSTANCE": "reader"}))
        try:
            wait_until(lambda: sum(reader.instances().values()) == len(PHOTOS), timeout=120)
            yield daemon, reader, (data / NAME_FILE).read_text().strip()
        finally:
            reader.close()
    finally:
        code = daemon.stop()
    assert code == 0


def variant(config: Path, path: Path, store_url: str, data: Path, old: str, new: str, store_lines: str = "") -> Path:
    """`config` with `old` replaced by `new` and lines added to [store]; on SQLite, the service's own file named
    (a data directory of its own would otherwise mean a store of its own)."""
    if store_url.startswith("sqlite"):
        store_lines += f'url = "sqlite://{data}/clipwatch.sqlite3"\n'
    path.write_text(config.read_text().replace(old, new).replace("[store]\n", f"[store]\n{store_lines}"))
    return path


def test_the_operators_commands_act_as_the_service_and_move_nothing(server, tmp_path: Path, store_url: str):
    user, config, uploads, data, creds = server
    home = tmp_path / "root-home"
    home.mkdir()
    with service(user, unit_env(data, creds), config, config, data) as (daemon, reader, name):
        scan = operator(config, home, "scan")
        assert scan.returncode == 0, scan.stderr
        for args in (("verdicts",), ("db", "status", "--json"), ("bank", "check", str(uploads / PHOTOS[0]))):
            done = operator(config, home, *args)
            assert done.returncode == 0, (args, done.stderr)
        status = json.loads(operator(config, home, "db", "status", "--json").stdout)
        assert status["instance"] == name
        dismiss = operator(config, home, "dismiss", "999999999")
        assert dismiss.returncode == 1 and "999999999" in dismiss.stderr + dismiss.stdout

        assert sorted(p.name for p in uploads.iterdir()) == sorted(PHOTOS), "every upload stays in place"
        assert reader.instances() == {name: len(PHOTOS)}, "one row per file, under the service's instance"
        assert {v.status for v in all_verdicts(reader).values()} == {"ok"}
        assert not any(home.rglob("*")), "nothing of the server's went into root's home"
        strangers = [p for p in [data, *data.rglob("*")] if p.lstat().st_uid != user.pw_uid]
        assert strangers == [], "root's commands left files the service cannot replace"
        assert daemon.proc.poll() is None

        # a second daemon as the same instance, from another data directory
        other = variant(config, tmp_path / "other.toml", store_url, data, f'data_dir = "{data}"',
                        f'data_dir = "{tmp_path / "d2"}"', f'instance = "{name}"\n')
        second = operator(other, home, "run")
        assert second.returncode == 2, second.stderr
        assert f"instance {name!r} is run by a daemon on host" in second.stderr
        assert sorted(p.name for p in uploads.iterdir()) == sorted(PHOTOS)
    status = json.loads(operator(config, tmp_path, "db", "status", "--json").stdout)
    assert [d["pid"] for d in status["daemons"]] == [0], "a clean stop gives the claim up"


def test_where_a_command_cannot_find_the_services_identity_it_refuses_and_moves_nothing(server, tmp_path: Path,
                                                                                      store_url: str):
    """The issue's case: the service's data directory comes from its environment only, so root's `scan`
    resolves another one (root's home) and would take a new instance name."""
    user, config, uploads, data, creds = server
    # the same configuration without daemon.data_dir, beside it (the service's user reads it)
    bare = variant(config, config.parent / "bare.toml", store_url, data, f'data_dir = "{data}"\n', "")
    env = {k: v for k, v in unit_env(data, creds).items() if k != "STATE_DIRECTORY"}
    home = tmp_path / "root-home"
    home.mkdir()
    with service(user, {**env, "CLIPWATCH_DAEMON__DATA_DIR": str(data)}, bare, config, data) as (_, reader, name):
        scan = operator(bare, home, "scan")
        if store_url.startswith("sqlite"):  # the server's own SQLite file: its one instance, adopted
            assert scan.returncode == 0, scan.stderr
        else:
            assert scan.returncode == 2, scan.stderr
            assert f"rows of instance {name!r}" in scan.stderr and "Nothing was stored or moved" in scan.stderr
            assert not list(home.rglob(NAME_FILE)), "no second name was made"
        assert sorted(p.name for p in uploads.iterdir()) == sorted(PHOTOS), "every upload stays in place"
        assert reader.instances() == {name: len(PHOTOS)}
        assert {v.status for v in all_verdicts(reader).values()} == {"ok"}


def test_a_command_from_another_user_is_refused_with_the_command_to_use(server, tmp_path: Path):
    user, config, _, data, _ = server
    os.chown(data, 0, 0)  # a data directory root's: the service's user may not write into it
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPWATCH_")}
    done = subprocess.run(clipwatch_command("db", "status", "--config", str(config)), env={**env, "HOME": str(data)},
                          capture_output=True, text=True, timeout=120, user=user.pw_uid, group=user.pw_gid,
                          extra_groups=[])
    assert done.returncode == 2, done.stderr
    assert f"sudo -u root clipwatch db status --config {config}" in done.stderr
    assert not (data / NAME_FILE).exists()


def test_under_systemd_the_configuration_file_must_name_the_data_directory(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('[watch]\npaths = ["/srv/a"]\n')
    with pytest.raises(ConfigError, match=r'data_dir = "/var/lib/clipwatch"'):
        load_config(file, env={"STATE_DIRECTORY": "/var/lib/clipwatch"})
    file.write_text('[watch]\npaths = ["/srv/a"]\n[daemon]\ndata_dir = "/var/lib/clipwatch"\n')
    assert str(load_config(file, env={"STATE_DIRECTORY": "/var/lib/clipwatch"}).data_dir) == "/var/lib/clipwatch"


def host(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: name)


def test_a_new_name_is_refused_where_this_hosts_instance_holds_the_files(make_harness, make_config, photos: Path,
                                                                          tmp_path: Path, store_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch):
    host(monkeypatch, "web1")
    service = make_harness(store__instance="")
    photos_in(photos, service.root)
    service.service.scan()
    name = service.store.instance
    instance.claim(service.store, service.config.data_dir)

    elsewhere = tmp_path / "root-data"  # root's shell: another data directory, the same store and uploads
    if store_url.startswith("sqlite"):  # an SQLite file is one server's: its one instance is taken, as the same
        same = open_store(make_config(store_url, store__instance="", daemon__data_dir=elsewhere))
        same.close()
        assert same.instance == name
        return
    with pytest.raises(Refused) as refused:
        open_store(make_config(store_url, store__instance="", daemon__data_dir=elsewhere))
    message = str(refused.value)
    assert repr(name) in message and str(service.config.data_dir) in message and "store.instance" in message
    assert not (elsewhere / NAME_FILE).exists(), "nothing was written"
    assert service.store.instances() == {name: len(PHOTOS)}

    host(monkeypatch, "web2")  # another server of the cluster, with the same directory layout: its own instance
    other = open_store(make_config(store_url, store__instance="", daemon__data_dir=tmp_path / "web2-data"))
    try:
        assert other.instance.startswith("web2-")
    finally:
        other.close()


@pytest.mark.parametrize("made_here", ["web1", "web1-0a1b2c3d", "registered"])
def test_a_file_never_matches_its_own_row_under_another_name(make_harness, photos: Path, made_here: str,
                                                             monkeypatch: pytest.MonkeyPatch):
    """The judge's rule: rows for the same path on this host are the same file, whatever the names say: the
    host's name, a name made here, or any name a daemon of this host registered."""
    host(monkeypatch, "web1")
    first = make_harness(store__instance="uploads-a" if made_here == "registered" else made_here)
    if made_here == "registered":
        instance.claim(first.store, first.config.data_dir)
    photos_in(photos, first.root, PHOTOS[:2])
    first.service.scan()
    (first.root / "copy.jpg").write_bytes((photos / PHOTOS[0]).read_bytes())  # a real copy, by another name

    second = make_harness(store__instance="uploads-b", duplicates__actions='{sha256 = "flag", pdq = "flag"}')
    second.service.scan()
    verdicts = statuses(second.store, "uploads-b")
    assert {verdicts[n] for n in PHOTOS[:2]} == {"ok"}, "never a copy of its own row"
    assert verdicts["copy.jpg"] == "duplicate", "a real copy is still caught"
    assert sorted(p.name for p in first.root.iterdir()) == sorted([*PHOTOS[:2], "copy.jpg"])


def statuses(store, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The status of each row of instance `name`, by file name."""
    rows = store._fetch(f"SELECT path, status FROM {store.t} WHERE instance = {store.PARAM}", [name])  # noqa: S608
    return {Path(r[0]).name: str(r[1]) for r in rows}


def test_a_second_daemon_of_a_live_instance_is_refused_and_a_taken_name_is_noticed(make_harness,
                                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                                    tmp_path: Path):
    host(monkeypatch, "web1")
    first = make_harness(store__instance="shared-name")
    instance.claim(first.store, first.config.data_dir)
    assert instance.beat(first.store, first.config.data_dir)
    host(monkeypatch, "web2")
    with pytest.raises(Refused, match="run by a daemon on host 'web1'"):
        instance.claim(first.store, tmp_path / "web2-data")
    monkeypatch.setattr(instance, "STALE_S", 0.0)  # web1's daemon went silent: its claim may be taken
    wait_until(lambda: first.store.registered()["shared-name"].seen_s > 0, timeout=5)
    instance.claim(first.store, tmp_path / "web2-data")
    host(monkeypatch, "web1")
    assert not instance.beat(first.store, first.config.data_dir), "the first daemon learns it lost the name"


def test_a_clean_stop_gives_the_name_up_at_once(make_harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A re-created container has a new host name: after its predecessor stopped cleanly it starts at once."""
    host(monkeypatch, "3f2a9c1b7d0e")
    old = make_harness(store__instance="shared-name")
    instance.claim(old.store, old.config.data_dir)
    instance.release(old.store, old.config.data_dir)
    assert old.store.registered()["shared-name"].host == "3f2a9c1b7d0e", "the host stays on record"
    host(monkeypatch, "9b8e7d6c5a4f")
    instance.claim(old.store, old.config.data_dir)
    assert old.store.registered()["shared-name"].host == "9b8e7d6c5a4f"
