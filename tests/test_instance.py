"""The instance name outlives the host name (a re-created container), one daemon per data directory, and the
health check's own credential. The host name is the one thing faked here (socket.gethostname): a test cannot
rename the machine; the container smoke test (scripts/image-test) re-creates a real container instead."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clipwatch.instance import NAME_FILE
from clipwatch.web.access import HEALTH_TOKEN_FILE
from clipwatch.web.users import set_user
from conftest import Daemon, all_verdicts, free_port, run_cli, wait_until

PHOTOS = ("anne_helene.jpg", "blackie.jpg", "cold_water.jpg")


def host(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: name)


def put_photos(photos: Path, root: Path, names: tuple[str, ...] = PHOTOS) -> None:
    for name in names:
        (root / name).write_bytes((photos / name).read_bytes())


def test_a_re_created_container_keeps_every_row_and_flags_nothing(make_harness, photos: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    host(monkeypatch, "3f2a9c1b7d0e")  # a container's host name is its id
    first = make_harness(store__instance="")
    put_photos(photos, first.root)
    first.service.scan()
    before = all_verdicts(first.store)
    name = (Path(first.config.daemon.data_dir) / NAME_FILE).read_text().strip()
    assert name.startswith("3f2a9c1b7d0e-") and first.store.instance == name

    host(monkeypatch, "9b8e7d6c5a4f")  # the same /data and uploads, a new container
    second = make_harness(store__instance="")
    second.service.scan()
    assert second.store.instance == name
    assert second.embedder.calls == [], "nothing is embedded again"
    assert all_verdicts(second.store) == before and {v.status for v in before.values()} == {"ok"}
    assert second.store.instances() == {name: len(PHOTOS)}


def test_an_installation_from_before_keeps_the_host_names_rows(make_harness, photos: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    host(monkeypatch, "web1")
    old = make_harness(store__instance="web1")  # what an earlier version took by default: the host name
    put_photos(photos, old.root)
    old.service.scan()
    before = all_verdicts(old.store)
    data_dir = Path(old.config.daemon.data_dir)
    assert not (data_dir / NAME_FILE).exists()

    upgraded = make_harness(store__instance="")
    upgraded.service.scan()
    assert (data_dir / NAME_FILE).read_text().strip() == "web1" and upgraded.store.instance == "web1"
    host(monkeypatch, "web1.example.org")  # and from now on the host name no longer matters
    renamed = make_harness(store__instance="")
    renamed.service.scan()
    assert renamed.store.instance == "web1"
    assert upgraded.embedder.calls == renamed.embedder.calls == []
    assert all_verdicts(renamed.store) == before


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_sqlite_store_from_an_earlier_container_keeps_its_rows(make_harness, photos: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    host(monkeypatch, "5d41402abc4b")
    old = make_harness(store__instance="5d41402abc4b")  # an earlier image: the container's id as its name
    put_photos(photos, old.root)
    old.service.scan()
    host(monkeypatch, "7d793037a076")  # the upgrade: a new container, the same /data
    upgraded = make_harness(store__instance="")
    upgraded.service.scan()
    assert upgraded.store.instance == "5d41402abc4b" and upgraded.embedder.calls == []
    assert {v.status for v in all_verdicts(upgraded.store).values()} == {"ok"}


def test_a_broken_name_file_stops_the_start_with_the_fix(make_harness, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / NAME_FILE).write_text("\n")
    with pytest.raises(Exception, match="must hold one name"):
        make_harness(store__instance="")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_second_daemon_on_the_data_directory_is_refused_and_commands_run_beside_it(
        daemon_env: dict[str, str], photos: Path, tmp_path: Path):
    env = {**daemon_env, "CLIPWATCH_STORE__INSTANCE": ""}
    put_photos(photos, tmp_path / "watched", PHOTOS[:1])
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("running"), timeout=120)
        name = (tmp_path / "data" / NAME_FILE).read_text().strip()
        assert next(e for e in daemon.events if e.get("event") == "running")["instance"] == name

        second = run_cli("run", env=env)
        assert second.returncode == 1
        assert f"another clipwatch daemon (pid {daemon.proc.pid})" in second.stderr + second.stdout

        put_photos(photos, tmp_path / "watched", PHOTOS[1:])
        scan = run_cli("scan", env=env)
        assert scan.returncode == 0, scan.stderr
        status = json.loads(run_cli("db", "status", "--json", env=env).stdout)
        assert status["instance"] == name
        assert status["instances"] == [{"instance": name, "count": len(PHOTOS)}]
    finally:
        code = daemon.stop()
    assert code == 0


def health_status(url: str, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_health_check_has_its_own_credential_when_metrics_are_protected(daemon_env: dict[str, str],
                                                                            tmp_path: Path):
    set_user(str(tmp_path / "users"), "ana", "correct horse")
    port = free_port()
    env = {**daemon_env, "CLIPWATCH_HTTP__PROTECT_METRICS": "true", "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{port}",
           "CLIPWATCH_HTTP__USERS_FILE": str(tmp_path / "users")}
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("running"), timeout=120)
        base = f"http://127.0.0.1:{port}"
        token_file = tmp_path / "data" / HEALTH_TOKEN_FILE
        assert token_file.stat().st_mode & 0o077 == 0, "only the daemon's user reads the token"
        token = token_file.read_text().strip()
        assert health_status(f"{base}/healthz") == 401
        assert health_status(f"{base}/healthz", "not-the-token") == 401
        assert health_status(f"{base}/metrics", token) == 401, "the token opens /healthz only"
        assert health_status(f"{base}/healthz", token) == 200

        ok = run_cli("health", env=env)
        assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
        elsewhere = run_cli("health", env={**env, "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / "other")})
        assert elsewhere.returncode == 1 and "health token" in elsewhere.stdout
    finally:
        code = daemon.stop()
    assert code == 0
