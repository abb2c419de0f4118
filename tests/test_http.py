"""The HTTP endpoint's gate: who may reach what, cross-site POSTs, and the search's bounds.

Most tests run the real app on the real server (uvicorn on a socket) in this process, with a real users
file; the daemon end to end is at the bottom. Where a test needs a search that is slow on purpose, the
search handler is a stand-in that sleeps: the real model's speed on an unknown machine cannot be
made to cross a time limit reliably.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from clipwatch.actions import Actions
from clipwatch.config import Config, HTTPConfig
from clipwatch.files import PathFilter
from clipwatch.metrics import Metrics
from clipwatch.store.sqlite import SQLiteStore
from clipwatch.web import WebContext, WebServer, build_app
from clipwatch.web.review import Desk
from clipwatch.web.thumbs import Thumbnails
from clipwatch.web.users import LoginThrottle, set_user
from conftest import Client, Daemon, clipwatch_command, free_port, rows_under, run_cli, wait_until, write_image

PROTECTED = [("GET", "/"), ("POST", "/search"), ("POST", "/check"), ("GET", "/thumb/1"), ("GET", "/file/1"),
             ("POST", "/api/decide"), ("GET", "/history"), ("POST", "/api/quarantine"), ("POST", "/api/release"),
             ("POST", "/api/undo"), ("GET", "/calibrate")]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _search(request: dict[str, Any]) -> dict[str, Any]:
    return {"results": [], "asked": sorted(request)}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Client]]:
    servers: list[WebServer] = []
    store = SQLiteStore(str(tmp_path / "store.sqlite3"), "images", "test")
    store.init_schema(512)
    roots = [str(tmp_path / "watched")]
    desk = Desk(store, threading.Lock(), Thumbnails(tmp_path / "thumbs", roots, "", 10**8, 10**8),
                Actions(store, PathFilter(roots, ("jpg",), ()), str(tmp_path / "q"), lambda path: None), Config())

    def start(loopback: bool = False, search: Callable[[dict[str, Any]], dict[str, Any]] = _search,
              **http: Any) -> Client:
        metrics = Metrics()
        config = HTTPConfig(**{"users_file": str(tmp_path / "users"), **http})
        app = build_app(WebContext(config, metrics, loopback, search, lambda: (True, {"status": "ok"}), desk))
        servers.append(WebServer(app, "127.0.0.1", 0))
        return Client(servers[-1].port, metrics)

    yield start
    for server in servers:
        server.close()
    store.close()


@pytest.fixture
def users(tmp_path: Path) -> Path:
    set_user(str(tmp_path / "users"), "ana", "correct horse")
    return tmp_path / "users"


def test_every_protected_route_needs_a_user_and_metrics_and_health_do_not(serve, users):
    client = serve()
    for method, path in PROTECTED:
        status, headers, _ = client.request(method, path, b"{}" if method == "POST" else None)
        assert status == 401, (method, path)
        assert headers["www-authenticate"].startswith("Basic")
    assert client.refused("unauthenticated") == len(PROTECTED)
    assert client.request("GET", "/metrics")[0] == 200
    assert client.request("GET", "/healthz")[0] == 200
    status, _, body = client.request("POST", "/search", b'{"text": "x"}', auth=("ana", "correct horse"))
    assert status == 200 and json.loads(body)["asked"] == ["text"]
    assert client.request("POST", "/search", b"{}", auth=("ana", "wrong"))[0] == 401
    _, headers, _ = client.request("GET", "/", auth=("ana", "correct horse"))
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and "unsafe-inline" not in str(headers)
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert client.request("POST", "/search", b"{}", auth=("bob", "correct horse"))[0] == 401


def test_a_browser_is_sent_to_the_login_page_and_comes_back_logged_in(serve, users):
    client = serve()
    status, headers, _ = client.request("GET", "/?status=duplicate", headers={"Accept": "text/html"})
    assert status == 303 and headers["location"] == "/login?next=%2F%3Fstatus%3Dduplicate"
    form = b"user=ana&password=wrong&next=%2F"
    status, _, body = client.request("POST", "/login", form, headers=FORM)
    assert status == 401 and b"Wrong user name or password" in body and not client.cookie
    form = b"user=ana&password=correct+horse&next=https%3A%2F%2Fevil.example%2F"
    status, headers, _ = client.request("POST", "/login", form, headers=FORM)
    assert status == 303 and headers["location"] == "/"  # never off to another site
    assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
    status, _, body = client.request("GET", "/", headers={"Accept": "text/html"})
    assert status == 200 and b"ana" in body
    assert client.request("POST", "/logout")[0] == 303
    assert client.request("GET", "/")[0] == 401


def test_the_users_file_is_read_again_when_it_changes(serve, users, tmp_path: Path):
    client = serve()
    assert client.request("POST", "/search", b"{}", auth=("bob", "pass word"))[0] == 401
    set_user(str(users), "bob", "pass word")
    assert client.request("POST", "/search", b"{}", auth=("bob", "pass word"))[0] == 200
    client.request("POST", "/login", b"user=bob&password=pass+word", headers=FORM)
    assert client.request("GET", "/")[0] == 200
    users.write_text("\n".join(line for line in users.read_text().splitlines() if not line.startswith("bob:")))
    assert client.request("GET", "/")[0] == 401  # removed from the file: the session ends too
    assert client.request("POST", "/search", b"{}", auth=("ana", "correct horse"))[0] == 200


def test_without_users_review_and_search_answer_only_on_loopback(serve):
    local = serve(loopback=True, users_file="")
    assert local.request("POST", "/search", b"{}")[0] == 200
    assert local.request("GET", "/")[0] == 200
    remote = serve(loopback=False, users_file="")
    status, _, body = remote.request("POST", "/search", b"{}")
    assert status == 404 and b"http.users_file" in body and remote.refused("off") == 1
    assert remote.request("GET", "/metrics")[0] == 200


def test_metrics_and_health_can_be_protected_too(serve, users):
    client = serve(protect_metrics=True)
    assert client.request("GET", "/metrics")[0] == 401
    assert client.request("GET", "/healthz")[0] == 401
    assert client.request("GET", "/metrics", auth=("ana", "correct horse"))[0] == 200


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "https://evil.example"}, {"Origin": "null"}])
def test_a_cross_site_post_is_refused_even_with_credentials(serve, users, headers: dict[str, str]):
    client = serve()
    status, _, body = client.request("POST", "/search", b"{}", auth=("ana", "correct horse"), headers=headers)
    assert status == 403 and b"cross-site" in body and client.refused("cross_site") == 1
    same = {"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{client.port}"}
    assert client.request("POST", "/search", b"{}", auth=("ana", "correct horse"), headers=same)[0] == 200


def test_an_oversized_search_body_gets_413_before_it_is_read(serve, users):
    client = serve(max_body_bytes=4096)
    big = json.dumps({"image": "A" * 5000}).encode()
    status, _, body = client.request("POST", "/search", big, auth=("ana", "correct horse"))
    assert status == 413 and b"http.max_body_bytes" in body
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=20)  # chunked: no Content-Length
    auth = "Basic " + base64.b64encode(b"ana:correct horse").decode()
    conn.request("POST", "/search", body=iter([big[:3000], big[3000:]]), headers={"Authorization": auth},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert client.refused("too_large") == 2


def test_searches_beyond_the_slots_or_the_time_limit_get_503_and_ingest_keeps_its_turn(serve, users):
    release = threading.Event()

    def slow(request: dict[str, Any]) -> dict[str, Any]:  # stand-in: a model run that takes its time
        release.wait(request.get("wait", 0))
        return {"results": []}

    client = serve(search=slow, search_concurrency=1, search_timeout_s=0.5)
    auth = ("ana", "correct horse")
    first: list[int] = []
    running = threading.Thread(target=lambda: first.append(client.request("POST", "/search", b'{"wait": 3}',
                                                                             auth=auth)[0]))
    running.start()
    wait_until(lambda: client.refused("too_slow") == 1, timeout=10, what="the first search to pass its limit")
    running.join(10)
    assert first == [503]
    status, headers, body = client.request("POST", "/search", b'{"wait": 0}', auth=auth)
    assert status == 503 and b"searches are running" in body and headers["retry-after"]  # its slot is still held
    release.set()
    wait_until(lambda: client.request("POST", "/search", b'{"wait": 0}', auth=auth)[0] == 200, timeout=10,
               what="the slot to come back once the slow search finished")


def test_user_add_writes_a_bcrypt_line_readable_by_its_owner_only(tmp_path: Path):
    users = tmp_path / "etc" / "users"
    env = {"CLIPWATCH_HTTP__USERS_FILE": str(users)}
    for name, password in (("ana", "first"), ("bob", "second"), ("ana", "third")):
        done = subprocess.run(clipwatch_command("user", "add", name, "--password-stdin"), input=password + "\n",
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "changed the password of ana" in done.stdout and "third" not in done.stdout + done.stderr
    lines = dict(line.split(":", 1) for line in users.read_text().splitlines())
    assert sorted(lines) == ["ana", "bob"] and lines["ana"].startswith("$2b$")
    assert bcrypt.checkpw(b"third", lines["ana"].encode()) and bcrypt.checkpw(b"second", lines["bob"].encode())
    assert users.stat().st_mode & 0o777 == 0o600
    empty = subprocess.run(clipwatch_command("user", "add", "eve", "--password-stdin"), input="\n",
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "empty" in empty.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(180)
def test_the_daemon_serves_search_and_review_to_its_users_over_tls(daemon_env: dict[str, str], reader, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    users = tmp_path / "users"
    set_user(str(users), "ana", "correct horse")
    env = {**daemon_env, "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
           "CLIPWATCH_HTTP__USERS_FILE": str(users), "CLIPWATCH_HTTP__TLS_CERT": str(cert),
           "CLIPWATCH_HTTP__TLS_KEY": str(key)}
    root = tmp_path / "watched"
    image = write_image(root / "a.jpg", seed=1)
    daemon = Daemon(env)
    try:
        wait_until(lambda: rows_under(reader, root), timeout=60, what="the row")
        assert run_cli("health", env=env).returncode == 0  # over https, trusting the daemon's own certificate
        served = run_cli("search", str(image), "--json", env={**env, "CLIPWATCH_LOG__LEVEL": "debug"})
        assert served.returncode == 0 and "daemon_refused_search" in served.stderr  # 401: searched here instead
        assert json.loads(served.stdout.splitlines()[0])["path"] == str(image)
        import ssl

        conn = http.client.HTTPSConnection("127.0.0.1", int(env["CLIPWATCH_METRICS__LISTEN"].rsplit(":")[1]),
                                           context=ssl.create_default_context(cafile=str(cert)), timeout=30)
        body = json.dumps({"image": base64.b64encode(image.read_bytes()).decode()})
        conn.request("POST", "/search", body, headers={
            "Authorization": "Basic " + base64.b64encode(b"ana:correct horse").decode()})
        answer = json.loads(conn.getresponse().read())
        assert answer["results"][0]["path"] == str(image)
        conn.request("GET", "/", headers={"Authorization": "Basic " + base64.b64encode(b"ana:correct horse").decode()})
        review = conn.getresponse()
        assert review.status == 200 and b'<ol class="queue">' in review.read()  # `clipwatch run` serves the page
        conn.close()
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(120)
def test_on_a_public_address_without_users_the_daemon_warns_and_serves_only_metrics(daemon_env: dict[str, str]):
    port = free_port()
    daemon = Daemon({**daemon_env, "CLIPWATCH_METRICS__LISTEN": f"0.0.0.0:{port}"})
    try:
        wait_until(lambda: daemon.saw("review_and_search_off"), timeout=60, what="the warning")
        warning = next(e for e in daemon.events if e.get("event") == "review_and_search_off")
        assert "http.users_file" in str(warning["fix"])
        client = Client(port, Metrics())
        assert client.request("GET", "/metrics")[0] == 200
        assert client.request("POST", "/search", b'{"text": "a cat"}')[0] == 404
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(180)
def test_a_scan_beside_a_running_daemon_leaves_the_port_to_it(daemon_env: dict[str, str], tmp_path: Path):
    env = {**daemon_env, "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    write_image(tmp_path / "watched" / "a.jpg", seed=1)
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("http_listening"), timeout=60, what="the daemon's endpoint")
        scan = run_cli("scan", env=env)
        assert scan.returncode == 0, scan.stderr
        assert run_cli("health", env=env).returncode == 0  # the daemon still answers on its port
    finally:
        assert daemon.stop() == 0


def test_failed_logins_are_throttled_per_address_and_name_with_429(serve, users):
    client = serve()
    for _ in range(LoginThrottle.PER_NAME):
        assert client.request("POST", "/search", b"{}", auth=("ana", "guess"))[0] == 401
    status, headers, body = client.request("POST", "/search", b"{}", auth=("ana", "correct horse"))
    assert status == 429 and b"too many failed logins" in body  # even the right password, for a while
    status, _, page = client.request("POST", "/login", b"user=ana&password=correct+horse", headers=FORM)
    assert status == 429 and b"try again in 10 minutes" in page
    assert client.refused("throttled") == 2
    set_user(str(users), "bob", "pass word")  # another name from the same address is not locked out
    assert client.request("POST", "/search", b"{}", auth=("bob", "pass word"))[0] == 200
