"""Fault injection: the daemon as a real process, killed, starved of its database, fed hostile files.

Every test asserts the exact final set of rows (paths, sha256 of the current content, unit vectors),
not merely that nothing crashed.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipwatch.embedder import Embedder
from clipwatch.store import Store
from conftest import Daemon, free_port, rows_under, run_cli, scrape, vector_at, wait_until, write_image

ROOT = Path(__file__).resolve().parent.parent


def expected_rows(root: Path) -> dict[str, str]:
    """Every image file below root (as the daemon sees them) and the sha256 of its current bytes."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if name.endswith(".jpg") and os.path.isfile(p) and not os.path.islink(p):
                found[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return found


def stored_rows(store: Store, root: Path) -> dict[str, str]:
    return {f.path: f.sha256 for f in store.iter_rows_under(str(root))}


def assert_vectors_correct(store: Store, embedder: Embedder, paths: list[str]) -> None:
    for path in paths:
        stored = vector_at(store, path)
        fresh = embedder.embed_images([Image.open(path).convert("RGB")])[0]
        assert stored is not None and abs(float(np.linalg.norm(stored)) - 1) < 1e-5
        assert np.allclose(stored, fresh, atol=1e-4), path


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql"], indirect=True)
@pytest.mark.timeout(480)
def test_ten_kill_9s_during_an_ingest_of_2000_files_end_with_exactly_2000_correct_rows(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path, embedder: Embedder):
    root = tmp_path / "watched"
    for d in range(20):
        (root / f"d{d:02}").mkdir()
    files = [write_image(root / f"d{i % 20:02}" / f"{i:04}.jpg", seed=i, size=(32, 24)) for i in range(2000)]
    env = {**daemon_env, "CLIPWATCH_METRICS__LISTEN": ""}
    rng = random.Random(2000)
    landed: list[int] = []  # rows after each kill, to show in a failure
    for round_ in range(10):
        daemon = Daemon(env)
        if round_ % 2:  # mid-ingest: once batches are being committed (if anything is left to do)
            wait_until(lambda d=daemon: d.saw("batch_committed") or any(
                e.get("event") == "scan_finished" and e.get("queued") == 0 for e in d.events),
                timeout=60, what="a batch to commit")
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # any moment: model loading, the start-up scan, the first batches
            time.sleep(rng.uniform(0.5, 8.0))
        daemon.kill()
        landed.append(len(stored_rows(reader, root)))
        if round_ % 3 == 2:  # the world moves on while the daemon is down
            victim = files.pop(rng.randrange(len(files)))
            victim.unlink()
            files.append(write_image(root / "d00" / f"new-{round_}.jpg", seed=10_000 + round_, size=(32, 24)))
            write_image(files[rng.randrange(len(files))], seed=20_000 + round_, size=(32, 24))  # new content
    assert len(files) == 2000
    final = Daemon(env)
    try:
        expected = expected_rows(root)
        # Its own start-up scan first: the rows may be complete already, and a stop during start-up would
        # test nothing (and meet the interpreter before its signal handlers are in place).
        wait_until(lambda: final.saw("scan_finished"), timeout=120, what="the last daemon's start-up scan")
        wait_until(lambda: stored_rows(reader, root) == expected, timeout=240, interval=1,
                   what=f"exactly one correct row per file (rows after each kill: {landed})")
    finally:
        assert final.stop() == 0
    assert len(expected) == 2000
    assert_vectors_correct(reader, embedder, random.Random(1).sample(sorted(expected), 20))


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql"], indirect=True)
@pytest.mark.timeout(300)
def test_mysql_restarted_mid_ingest_loses_nothing_and_duplicates_nothing(
        daemon_env: dict[str, str], tmp_path: Path, private_mysql, embedder: Embedder):
    from clipwatch.config_loader import load_config
    from clipwatch.store import open_store

    url, start_mysql, stop_mysql = private_mysql
    root = tmp_path / "watched"
    env = {**daemon_env, "CLIPWATCH_STORE__URL": url, "CLIPWATCH_WATCH__QUEUE_SIZE": "16",
           "CLIPWATCH_WATCH__RESCAN_INTERVAL_S": "3", "CLIPWATCH_MODEL__BATCH_SIZE": "8",
           "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")
        for i in range(100):
            write_image(root / f"before-{i:03}.jpg", seed=i, size=(32, 24))
        wait_until(lambda: scrape(daemon)['clipwatch_files_processed_total{result="embedded"}'] >= 1,
                   what="the first rows")
        stop_mysql()  # mid-ingest: batches are in flight
        for i in range(150):  # more than the queue holds while the worker waits: events are dropped
            write_image(root / f"during-{i:03}.jpg", seed=1000 + i, size=(32, 24))
        wait_until(lambda: daemon.saw("store_unavailable"), what="the outage to be noticed")
        health = run_cli("health", env=env)
        assert health.returncode == 1 and "the store is unreachable" in health.stdout
        metrics = scrape(daemon)
        assert metrics["clipwatch_store_up"] == 0 and metrics["clipwatch_events_dropped_total"] > 0
        start_mysql()
        store = open_store(load_config(None, env=env))
        try:
            expected = expected_rows(root)
            wait_until(lambda: stored_rows(store, root) == expected, timeout=120, interval=0.5,
                       what="every file to land once MySQL is back")
            assert len(expected) == 250
            count = store._fetch(f"SELECT COUNT(*) FROM {store.t}")[0][0]  # type: ignore[attr-defined]  # noqa: S608
            assert count == 250  # nothing written twice
            assert_vectors_correct(store, embedder, sorted(expected)[::25])
        finally:
            store.close()
        # the index sync retries every sync_interval_s: healthy again within a few of them
        wait_until(lambda: run_cli("health", env=env).returncode == 0, timeout=30, interval=0.5,
                   what="health to recover once MySQL is back")
    finally:
        assert daemon.stop() == 0


def _png_bomb() -> bytes:
    """A valid PNG header declaring 50,000 x 50,000 pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _gif_bomb() -> bytes:
    """A GIF whose logical screen is 1x1 but whose first frame declares 30,000 x 30,000 pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 30_000, 30_000, 0) + b"\x02\x02\x4c\x01\x00"
    return header + frame + b"\x3b"


def _encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(seed: int, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.timeout(240)
def test_hostile_and_broken_files_are_refused_by_reason_and_the_good_ones_next_to_them_land(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    root, outside, bad_dir = tmp_path / "watched", tmp_path / "outside", tmp_path / "bad-files"
    outside.mkdir()
    write_image(outside / "private.jpg", seed=99)
    env = {**daemon_env, "CLIPWATCH_ERRORS__QUARANTINE_DIR": str(bad_dir), "CLIPWATCH_WATCH__RESCAN_INTERVAL_S": "2"}
    daemon = Daemon(env)
    wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")

    animated = [_noise(i, "P") for i in range(3)]
    exif = Image.Exif()
    exif[0x0112] = 6
    good: dict[str, bytes] = {
        "plain.jpg": _encoded(_noise(1), "JPEG"),
        "animated.jpg": _encoded(animated[0], "GIF", save_all=True, append_images=animated[1:]),
        "animated-webp.jpg": _encoded(_noise(2), "WEBP", save_all=True, append_images=[_noise(3)]),
        "cmyk.jpg": _encoded(_noise(4, "CMYK"), "JPEG"),
        "16-bit.jpg": _encoded(Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), "PNG"),
        "palette.jpg": _encoded(_noise(5, "P"), "PNG"),
        "alpha.jpg": _encoded(_noise(6, "RGBA"), "PNG"),
        "rotated.jpg": _encoded(_noise(7), "JPEG", exif=exif),
        "it's \"quoted\".jpg": _encoded(_noise(8), "JPEG"),
        "back\\slash; 100%.jpg": _encoded(_noise(9), "JPEG"),
        "new\nline.jpg": _encoded(_noise(10), "JPEG"),
        "emoji 🐈‍⬛.jpg": _encoded(_noise(11), "JPEG"),
        "x'); DROP TABLE images; --.jpg": _encoded(_noise(12), "JPEG"),
        "é" * 125 + "1.jpg": _encoded(_noise(13), "JPEG"),  # a 255-byte name
    }
    refused = {  # name -> (stage, reason)
        "empty.jpg": (b"", ("read", "empty")),
        "truncated.jpg": (_encoded(_noise(20), "JPEG")[:300], ("decode", "decode_error")),
        "truncated-png.jpg": (_encoded(_noise(21), "PNG")[:80], ("decode", "decode_error")),
        "text.jpg": (b"just some text with an image's name", ("decode", "not_an_image")),
        "bomb.jpg": (_png_bomb(), ("decode", "too_many_pixels")),
        "gif-bomb.jpg": (_gif_bomb(), ("decode", "too_many_pixels")),
    }
    for name, data in good.items():
        (root / name).write_bytes(data)
    for name, (data, _) in refused.items():
        (root / name).write_bytes(data)
    not_utf8 = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    with open(not_utf8, "wb") as f:
        f.write(_encoded(_noise(30), "JPEG"))
    os.symlink("/etc/passwd", root / "passwd.jpg")
    os.symlink(outside, root / "linked-dir")  # a directory link out of the root: never entered
    os.mkfifo(root / "fifo.jpg")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.jpg"))
    (root / "photo.jpg").mkdir()  # a directory with an image's name is a directory: its images count
    (root / "photo.jpg" / "inside.jpg").write_bytes(_encoded(_noise(31), "JPEG"))
    not_files = 3  # the /etc/passwd link, the FIFO, the socket

    try:
        expected = {str(root / n) for n in good} | {str(root / "photo.jpg" / "inside.jpg")}
        wait_until(lambda: set(rows_under(reader, root)) == expected, timeout=60, what="the good files' rows")
        metrics = wait_until(lambda: (m := scrape(daemon))[
            'clipwatch_errors_total{reason="not_a_file",stage="read"}'] == not_files and m, what="the error counts")
        for _, (stage, reason) in refused.values():
            want = sum(1 for _, r in refused.values() if r == (stage, reason))
            assert metrics[f'clipwatch_errors_total{{reason="{reason}",stage="{stage}"}}'] == want, reason
        assert metrics['clipwatch_errors_total{reason="bad_name",stage="read"}'] == 1
        for name in refused:  # moved aside, keeping their names
            assert (bad_dir / name).exists() and not (root / name).exists()
        assert os.path.exists(os.path.join(os.fsencode(bad_dir), b"caf\xe9.jpg"))
        assert (root / "fifo.jpg").exists() and (root / "passwd.jpg").is_symlink()  # never opened, left alone
        assert not any("private" in p or "passwd" in p for p in rows_under(reader, root))
        assert run_cli("health", env=env).returncode in (0, 2)  # 2: metrics on port 0 cannot be asked
        rescans = len([e for e in daemon.events if e.get("event") == "rescan_finished"])
        wait_until(lambda: len([e for e in daemon.events if e.get("event") == "rescan_finished"]) >= rescans + 2,
                   what="two more rescans")
        again = scrape(daemon)
        assert again['clipwatch_errors_total{reason="not_a_file",stage="read"}'] == not_files  # not retried
        assert set(rows_under(reader, root)) == expected
    except AssertionError:
        print("".join(daemon.raw[-80:]))
        raise
    finally:
        sock.close()
        assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_a_root_that_disappears_keeps_its_rows_and_is_watched_again_when_it_returns(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    root = tmp_path / "watched"
    first = write_image(root / "first.jpg", seed=1)
    daemon = Daemon({**daemon_env, "CLIPWATCH_WATCH__RESCAN_INTERVAL_S": "0.5"})
    try:
        wait_until(lambda: str(first) in rows_under(reader, root), timeout=60, what="the first row")
        root.rename(tmp_path / "unmounted")
        wait_until(lambda: daemon.saw("root_missing"), what="a rescan to find the root missing")
        assert set(rows_under(reader, root)) == {str(first)}  # kept while it is away
        (tmp_path / "unmounted").rename(root)
        wait_until(lambda: daemon.saw("root_watched_again"), what="the watch to come back")
        later = write_image(root / "later.jpg", seed=2)
        wait_until(lambda: set(rows_under(reader, root)) == {str(first), str(later)}, what="a file written after")
    finally:
        assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_a_second_signal_exits_at_once_without_half_written_rows(daemon_env: dict[str, str], reader: Store,
                                                                 tmp_path: Path):
    root = tmp_path / "watched"
    base = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    for i in range(8):  # a first batch of small files, then one batch of big ones that takes seconds to decode
        write_image(root / f"small-{i}.jpg", seed=i)
    for i in range(160):
        base[:8, :8] = i
        Image.fromarray(base).save(root / f"big-{i:03}.jpg", quality=95)
    daemon = Daemon({**daemon_env, "CLIPWATCH_MODEL__BATCH_SIZE": "160", "CLIPWATCH_MODEL__MAX_WAIT_MS": "5000",
                     "CLIPWATCH_DAEMON__SHUTDOWN_TIMEOUT_S": "60"})
    wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="the scan to queue every file")
    daemon.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: daemon.saw("stopping"), what="the first signal to be handled")
    assert not daemon.saw("stopped")  # still finishing the batch in hand
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 1
    assert time.monotonic() - started < 3
    daemon.kill()
    rows = stored_rows(reader, root)
    expected = expected_rows(root)
    assert all(expected[p] == sha for p, sha in rows.items())  # whatever landed landed whole
    assert all(vector_at(reader, p) is not None for p in rows)


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql"], indirect=True)
@pytest.mark.timeout(420)
def test_a_burst_of_20000_files_faster_than_the_watcher_ends_with_20000_rows(
        daemon_env: dict[str, str], reader: Store, tmp_path: Path):
    # The queue is far smaller than the burst, so most events are dropped (as the kernel drops them when
    # its inotify queue overflows): what must bring every file in is the rescan.
    root = tmp_path / "watched"
    env = {**daemon_env, "CLIPWATCH_WATCH__QUEUE_SIZE": "256", "CLIPWATCH_MODEL__BATCH_SIZE": "256",
           "CLIPWATCH_WATCH__RESCAN_INTERVAL_S": "600", "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")
        for d in range(40):
            (root / f"d{d:02}").mkdir()
        for i in range(20_000):
            write_image(root / f"d{i % 40:02}" / f"{i:05}.jpg", seed=i, size=(16, 12))
        expected = expected_rows(root)
        wait_until(lambda: len(stored_rows(reader, root)) == 20_000, timeout=300, interval=2,
                   what="20,000 rows")
        assert stored_rows(reader, root) == expected
        assert scrape(daemon)["clipwatch_events_dropped_total"] > 0  # the burst did overflow the queue
        assert daemon.saw("rescan_finished")  # and a rescan, not the 600 s timer, recovered it
    finally:
        assert daemon.stop() == 0
