"""`clipwatch run` as a real subprocess: real inotify events, real files, real stores, real signals."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipwatch.store import Store
from conftest import Daemon, free_port, rows_under, scrape, vector_at, wait_until, write_image

NAMES = ["plain.jpg", "it's \"quoted\".jpg", "100% off; 50%.png", "new\nline.jpg", "ünïcødé 猫 🐈.webp"]


@pytest.mark.timeout(180)
def test_daemon_follows_writes_edits_moves_and_deletes_then_stops_on_sigterm(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    root = tmp_path / "watched"
    existing = write_image(root / "before-start.jpg", seed=100)  # found by the start-up scan
    daemon = Daemon(daemon_env)
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")
        wait_until(lambda: str(existing) in rows_under(reader, root), what="the start-up scan's row")

        formats = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
        files = [write_image(root / n, seed=i, fmt=formats[Path(n).suffix]) for i, n in enumerate(NAMES)]
        rows = wait_until(lambda: len(r := rows_under(reader, root)) == 6 and r, what="one row per new file")
        for f in files:
            row = rows[str(f)]  # the exact name, quotes, %, newline and all
            assert row.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
            assert row.model == "tiny-clip"
            vec = vector_at(reader, str(f))
            assert vec.shape == (512,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5

        edited = files[0]
        write_image(edited, seed=42)
        new_sha = hashlib.sha256(edited.read_bytes()).hexdigest()
        wait_until(lambda: rows_under(reader, root)[str(edited)].sha256 == new_sha, what="the edit")
        assert rows_under(reader, root)[str(edited)].id == rows[str(edited)].id

        (root / "moved here").mkdir()
        moved_to = root / "moved here" / "renamed.jpg"
        files[1].rename(moved_to)
        wait_until(lambda: str(moved_to) in rows_under(reader, root), what="the move")
        after_move = rows_under(reader, root)
        assert str(files[1]) not in after_move and after_move[str(moved_to)].id == rows[str(files[1])].id

        upload = root / "upload.jpg.part"  # an upload written under a temporary name, then renamed
        write_image(upload, seed=77, fmt="JPEG")
        upload.rename(root / "upload.jpg")
        wait_until(lambda: str(root / "upload.jpg") in rows_under(reader, root), what="the renamed upload")

        files[2].unlink()
        wait_until(lambda: str(files[2]) not in rows_under(reader, root), what="the delete")
        assert not any(p.endswith(".part") for p in rows_under(reader, root))

        # counted once the batch is finished, a moment after its commit removed the row
        metrics = wait_until(lambda: (m := scrape(daemon))['clipwatch_files_processed_total{result="deleted"}'] == 1
                             and m, what="the delete to be counted")
        assert metrics['clipwatch_files_processed_total{result="embedded"}'] >= 8
        assert metrics["clipwatch_model_calls_total"] < metrics['clipwatch_files_processed_total{result="embedded"}']
        assert metrics["clipwatch_queue_capacity"] == 1024
    finally:
        started = time.monotonic()
        code = daemon.stop()
    assert code == 0, "".join(daemon.raw)
    assert time.monotonic() - started < 10
    assert daemon.saw("stopped")


def test_restart_reconciles_what_changed_while_the_daemon_was_down(daemon_env, reader: Store, tmp_path: Path):
    root = tmp_path / "watched"
    kept, removed = write_image(root / "kept.jpg", seed=1), write_image(root / "removed.jpg", seed=2)
    first = Daemon(daemon_env)
    wait_until(lambda: len(rows_under(reader, root)) == 2, timeout=60, what="first run's rows")
    assert first.stop() == 0
    removed.unlink()
    added = write_image(root / "added.jpg", seed=3)
    second = Daemon(daemon_env)
    try:
        wait_until(lambda: sorted(rows_under(reader, root)) == sorted([str(kept), str(added)]), timeout=60,
                   what="the reconcile on restart")
    finally:
        assert second.stop() == 0


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql", "mariadb"], indirect=True)
@pytest.mark.timeout(180)
def test_two_daemons_sharing_one_server_table_catch_each_others_duplicates(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    """Each daemon holds every vector in memory and follows the other through the index sync."""
    daemons = two_daemons(tmp_path, {**daemon_env, "CLIPWATCH_INDEX__SYNC_INTERVAL_S": "0.2",
                                     "CLIPWATCH_INDEX__WHERE": "memory"})
    try:
        original = catch_each_others_duplicates(daemons, reader, tmp_path, after_a_stored=lambda: wait_until(
            lambda: scrape(daemons[1])["clipwatch_index_size"] >= 1, what="server B's index to sync"))
        assert original.exists()
    finally:
        for d in daemons:
            assert d.stop() == 0


@pytest.mark.mariadb
@pytest.mark.parametrize("store_url", ["mariadb"], indirect=True)
@pytest.mark.timeout(180)
def test_two_daemons_asking_mariadbs_vector_index_see_each_others_rows_at_once(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    """index.where = "database": a row committed by server A is in server B's next query, with no sync
    interval to wait for (it is an hour here), and B's search is answered from the database too."""
    from conftest import run_cli

    env = {**daemon_env, "CLIPWATCH_INDEX__SYNC_INTERVAL_S": "3600", "CLIPWATCH_INDEX__WHERE": "database"}
    daemons = two_daemons(tmp_path, env)
    try:
        original = catch_each_others_duplicates(daemons, reader, tmp_path, after_a_stored=lambda: None)
        loaded = [e.get("where") for d in daemons for e in d.events if e.get("event") == "index_loaded"]
        assert loaded == ["database", "database"]
        served = run_cli("search", str(original), "--json", "--top", "1",
                         env={**daemons[1].env, "CLIPWATCH_LOG__LEVEL": "debug"})
        assert served.returncode == 0 and "searched_by_daemon" in served.stderr, served.stderr
        best = json.loads(served.stdout.splitlines()[0])
        assert best["path"] == str(original) and best["similarity"] > 0.9999
    finally:
        for d in daemons:
            assert d.stop() == 0


def two_daemons(tmp_path: Path, env: dict[str, str]) -> list[Daemon]:
    """Servers A and B: one table, each its own root, instance and data directory."""
    daemons = []
    for name in ("a", "b"):
        root = tmp_path / f"server-{name}"
        root.mkdir()
        daemons.append(Daemon({**env, "CLIPWATCH_WATCH__PATHS": str(root), "CLIPWATCH_STORE__INSTANCE": name,
                               "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
                               "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / f"data-{name}")}))
    for d in daemons:
        wait_until(lambda d=d: d.saw("scan_finished"), timeout=60, what="start-up")
    return daemons


def catch_each_others_duplicates(daemons: list[Daemon], reader: Store, tmp_path: Path,
                                 after_a_stored: Callable[[], object]) -> Path:
    """An image stored by A; a resized copy and an exact copy uploaded to B are B's duplicates of A's row."""
    from PIL import Image

    original = write_image(tmp_path / "server-a" / "original.jpg", seed=1, size=(96, 72))
    sha = hashlib.sha256(original.read_bytes()).hexdigest()
    stored = wait_until(lambda: [c.row for c in reader.find_by_sha256([sha]).get(sha, [])], what="server A's row")
    after_a_stored()
    resized = tmp_path / "server-b" / "resized.png"
    Image.open(original).resize((80, 60)).save(resized)
    exact = tmp_path / "server-b" / "exact.jpg"
    exact.write_bytes(original.read_bytes())
    verdicts = wait_until(lambda: len(v := [e for e in daemons[1].events if e.get("event") == "verdict"]) == 2
                          and v, what="server B's verdicts")
    by_path = {v["path"]: v for v in verdicts}
    for path in (str(resized), str(exact)):
        assert by_path[path]["status"] == "duplicate"
        assert by_path[path]["match_id"] == stored[0].id
        assert by_path[path]["matched_path"] == str(original)
    assert (by_path[str(exact)]["score"], by_path[str(exact)]["signal"]) == (1.0, "sha256")
    assert by_path[str(resized)]["signal"] in ("pdq", "clip") and by_path[str(resized)]["score"] >= 0.97
    return original


@pytest.mark.timeout(180)
def test_search_is_answered_by_the_running_daemon_and_matches_a_local_search(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    from conftest import run_cli

    env = {**daemon_env, "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    root = tmp_path / "watched"
    files = [write_image(root / f"s{i}.jpg", seed=i) for i in range(4)]
    daemon = Daemon(env)
    try:
        wait_until(lambda: len(rows_under(reader, root)) == 4, timeout=60, what="the rows")
        served = run_cli("search", str(files[2]), "--json", "--top", "3", env={**env, "CLIPWATCH_LOG__LEVEL": "debug"})
        assert served.returncode == 0, served.stderr
        assert "searched_by_daemon" in served.stderr
        local = run_cli("search", str(files[2]), "--json", "--top", "3", "--local", env=env)
        assert "searched_by_daemon" not in local.stderr
        by_daemon = [json.loads(line) for line in served.stdout.splitlines()]
        by_store = [json.loads(line) for line in local.stdout.splitlines()]
        assert [r["path"] for r in by_daemon] == [r["path"] for r in by_store]
        assert by_daemon[0]["path"] == str(files[2]) and by_daemon[0]["similarity"] > 0.9999
        assert np.allclose([r["similarity"] for r in by_daemon], [r["similarity"] for r in by_store], atol=1e-5)
        bad = run_cli("search", "--vector", "[1, 2]", env=env)
        assert bad.returncode == 1 and "vector: has 2 dimensions, the table holds 512" in bad.stderr
    finally:
        assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_systemd_notify_messages_arrive_in_order(daemon_env: dict[str, str], tmp_path: Path):
    import socket

    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(30)
        daemon = Daemon({**daemon_env, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        messages: list[str] = []

        def receive_until(field: str) -> None:
            while not any(m.startswith(field) for m in messages):
                messages.extend(listener.recv(4096).decode().split("\n"))

        try:
            receive_until("READY=1")
            receive_until("WATCHDOG=1")
            while messages.count("WATCHDOG=1") < 3:  # pinged again and again from the worker's loop
                messages.extend(listener.recv(4096).decode().split("\n"))
        finally:
            code = daemon.stop()
        receive_until("STOPPING=1")
    assert code == 0
    order = [m.split("=")[0] for m in messages]
    assert order.index("EXTEND_TIMEOUT_USEC") < order.index("READY") < order.index("WATCHDOG") < order.index("STOPPING")
    ready_status = messages[order.index("READY") + 1]
    assert ready_status.startswith("STATUS=watching 1 roots, ")
    assert any(m.startswith("STATUS=loading the model") for m in messages[: order.index("READY")])


def test_a_signal_during_start_up_is_a_clean_stop(daemon_env: dict[str, str]):
    daemon = Daemon(daemon_env)
    wait_until(lambda: daemon.saw("model_loaded"), timeout=60, what="the model to load")  # still starting
    assert daemon.stop() == 0
    assert daemon.saw("stopped")
