"""The running daemon, asked over HTTP at metrics.listen by one-shot commands: `clipwatch health`, and
`clipwatch search` (which the daemon answers with its index and model already loaded)."""

from __future__ import annotations

import json
from typing import Any

from .config import Config
from .errors import ClipwatchError, ConfigError
from .logs import get_logger

log = get_logger("clipwatch")


def cmd_health(config: Config) -> int:
    import urllib.error

    from .web.access import HEALTH_TOKEN_FILE, read_health_token  # the daemon's own credential for /healthz

    url = daemon_url(config, "/healthz")
    if url is None:
        raise ConfigError("metrics.listen: the health check needs the daemon's HTTP endpoint, which is disabled")
    try:
        with open_daemon(config, url, None, timeout=10, token=read_health_token(config.data_dir)) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            print(f"unknown: {url} asks for a user (http.protect_metrics) and the daemon's health token in "
                  f"{config.data_dir / HEALTH_TOKEN_FILE} is missing, not readable here or not this daemon's "
                  "(run this as the daemon's user, with its daemon.data_dir)")
            return 1
        body = json.loads(exc.read() or b"{}")
        print(f"unhealthy: {'; '.join(body.get('problems', [])) or exc.reason}")
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: no daemon answers at {url} ({exc})")
        return 1
    print(f"ok: queue {body.get('queue_depth')}, index {body.get('index_size')} vectors")
    return 0


def daemon_url(config: Config, path: str) -> str | None:
    from .config import metrics_address

    address = metrics_address(config)
    if address is None or address[1] == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address[0], address[0])
    scheme = "https" if config.http.tls_cert else "http"
    return f"{scheme}://[{host}]:{address[1]}{path}" if ":" in host else f"{scheme}://{host}:{address[1]}{path}"


def open_daemon(config: Config, url: str, body: bytes | None, timeout: float, token: str = "") -> Any:
    """urlopen of the daemon's endpoint; over TLS, its certificate is trusted as its own authority (a
    self-signed one works when it names the host of metrics.listen)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=config.http.tls_cert) if config.http.tls_cert else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout, context=context)


def ask_daemon(config: Config, request: dict[str, object]) -> dict[str, Any] | None:
    """The running daemon's answer (its index and model are loaded), or None if no daemon of this store
    and table answers at metrics.listen, or it asks for a user (http.users_file): then the search runs here."""
    import urllib.error

    url = daemon_url(config, "/search")
    if url is None:
        return None
    try:
        with open_daemon(config, url, json.dumps(request).encode(), timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            raise ClipwatchError(json.loads(exc.read()).get("error", "bad request")) from None
        log.debug("daemon_refused_search", url=url, status=exc.code)
        return None
    except (OSError, ValueError):
        return None  # no daemon there: search locally
    if answer.get("table") != config.store.table or answer.get("store") != config.store_url.redacted():
        return None  # a daemon of another store or table
    log.debug("searched_by_daemon", url=url)
    return answer
