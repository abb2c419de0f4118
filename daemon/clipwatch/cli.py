"""The `clipwatch` command: it only parses arguments and picks a mode of `Service`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, load_config
from .errors import ClipwatchError, ConfigError
from .logs import configure_logging, get_logger
from .metrics import Metrics
from .scanner import ScanCounts

if TYPE_CHECKING:
    import numpy as np

    from .embedder import Embedder

log = get_logger("clipwatch")

DESCRIPTION = """\
clipwatch watches directories for images, embeds each new or changed image with a CLIP model
(sentence-transformers) in batches, and keeps one row per image, with its vector, in MySQL 9 or SQLite.

Configuration comes from a TOML file (--config, or $CLIPWATCH_CONFIG) and CLIPWATCH_<SECTION>__<KEY>
environment variables; every key is documented in config/clipwatch.example.toml.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipwatch", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipwatch {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH",
                        help="TOML configuration file (default: $CLIPWATCH_CONFIG; without either, "
                             "built-in defaults and environment variables only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground",
                   description="Watch the configured directories and ingest images until SIGTERM or SIGINT. "
                               "On start, every root is scanned and reconciled with the store. A first "
                               "signal finishes and commits the batch in hand, then exits 0; a second "
                               "exits at once.")
    sub.add_parser("scan", parents=[common], help="reconcile the directories with the store once, then exit",
                   description="Walk every watched root once: embed new and changed images, update moved "
                               "ones, remove rows whose file is gone (store.on_delete). Prints a progress "
                               "line on a terminal and a summary at the end. Safe to run while the daemon "
                               "runs on the same store.")
    search = sub.add_parser(
        "search", parents=[common], help="which stored images look like this one?",
        description="Rank the stored images (every instance sharing the table, configured model) by cosine "
                    "similarity to an image, a text description or a vector, best first. A daemon of the same "
                    "store and table running at metrics.listen answers at once (index and model loaded); "
                    "otherwise the vectors are loaded from the store, and the model for an image or a text.",
        epilog="examples:\n  clipwatch search upload.jpg\n  clipwatch search --text 'a red bicycle' --top 10\n"
               "  clipwatch search --vector '[0.012, -0.034, ...]' --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    what = search.add_mutually_exclusive_group(required=True)
    what.add_argument("image", nargs="?", metavar="IMAGE", help="an image file")
    what.add_argument("--text", metavar="TEXT", help="a description, embedded with CLIP's text tower")
    what.add_argument("--vector", metavar="JSON", help="a JSON list of numbers, or a .json file holding one")
    search.add_argument("--top", type=int, default=5, metavar="K", help="how many results (default 5)")
    search.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    search.add_argument("--local", action="store_true",
                        help="do not ask the running daemon (at metrics.listen); load the vectors from the store")
    compare = sub.add_parser(
        "compare", parents=[common], help="the similarity of two images or vectors",
        description="Print one number: how similar A and B are. Each is an image file, a JSON list of "
                    "numbers, or a .json file holding one (images are embedded with the configured model).")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")
    compare.add_argument("--metric", choices=("cosine", "dot", "euclidean"), default="cosine",
                         help="cosine similarity (default), raw dot product, or euclidean distance")
    imp = sub.add_parser(
        "import", parents=[common], help="store vectors computed elsewhere (JSON lines)",
        description='Read JSON lines {"path": "...", "embedding": [...], "model": "...", "sha256": "..."} '
                    "(model defaults to the configured one; sha256 is computed from the file when it is "
                    "here). Vectors are checked against the table's dimension, normalised, and judged for "
                    "duplicates and prohibited content like ingested images. A bad line is reported with "
                    "its number and skipped; the others are imported. Exits 1 if any line was bad.")
    imp.add_argument("file", metavar="FILE", help="the JSON-lines file, or - for standard input")
    sub.add_parser("health", parents=[common], help="is the running daemon healthy? (exit 0 if so)",
                   description="Ask the daemon at metrics.listen for /healthz. Exits 0 when its worker loop "
                               "ticked recently, its store answers and its watches run; exits 1 with the "
                               "reason otherwise (or when no daemon answers). For Docker's HEALTHCHECK and "
                               "monitoring scripts.")
    db = sub.add_parser("db", help="database commands (init, status)",
                        description="Create the table or show what the store holds.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    init = db_sub.add_parser("init", parents=[common], help="create the table if it does not exist",
                             description="Create store.table with a VECTOR column sized for the model. "
                                         "Without --dimension the model is loaded to find its dimension.")
    init.add_argument("--dimension", type=int, metavar="N",
                      help="vector dimension (512 for clip-ViT-B-32), to skip loading the model")
    status = db_sub.add_parser("status", parents=[common], help="rows by status and model, dimension, store",
                               description="Show where the store is, the table's vector dimension and "
                                           "how many rows it holds by status and model.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.log.format, config.log.level, sys.stdout if args.command == "run" else sys.stderr)
        if args.command == "run":
            return cmd_run(config)
        if args.command == "scan":
            return cmd_scan(config)
        if args.command == "search":
            return cmd_search(config, args)
        if args.command == "compare":
            return cmd_compare(config, args.a, args.b, args.metric)
        if args.command == "import":
            return cmd_import(config, args.file)
        if args.command == "health":
            return cmd_health(config)
        if args.db_command == "init":
            return cmd_db_init(config, args.dimension)
        return cmd_db_status(config, args.json)
    except ConfigError as exc:
        print(f"clipwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except ClipwatchError as exc:
        print(f"clipwatch: {exc}", file=sys.stderr)
        return 1


def cmd_run(config: Config) -> int:
    from .service import Service

    return Service.opened(config, handle_signals=True).run()


def cmd_scan(config: Config) -> int:
    from .service import Service

    service = Service.opened(config)
    progress = _progress if sys.stderr.isatty() else None
    counts = service.scan(progress)
    if progress:
        print(file=sys.stderr)
    m = service.metrics
    done = {r: m.processed_count(r) for r in ("embedded", "unchanged", "deleted", "failed")}
    print(f"scan: {counts.files} image files, {counts.queued} new or changed, {counts.gone} gone; "
          f"embedded {done['embedded']}, unchanged {done['unchanged']}, deleted {done['deleted']}, "
          f"failed {done['failed']}")
    return 0


def _progress(counts: ScanCounts, metrics: Metrics) -> None:
    """A one-line progress bar on stderr: work done of the work found so far (the walk may still be going)."""
    done = sum(metrics.processed_count(r) for r in ("embedded", "unchanged", "moved", "deleted", "failed"))
    todo = max(counts.queued + counts.gone, done, 1)
    filled = int(30 * done / todo)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{todo} done, {counts.files} image files scanned ",
          end="", file=sys.stderr, flush=True)


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    import base64

    from .files import read_file
    from .search import read_vector_argument, table

    if args.top < 1:
        raise ConfigError(f"--top: expected a positive integer, got {args.top}")
    request: dict[str, object] = {"top": args.top}
    if args.vector is not None:
        vector = read_vector_argument(args.vector, "--vector")
        request["vector"] = vector.tolist() if vector is not None else args.vector
    elif args.text is not None:
        request["text"] = args.text
    else:
        request["image"] = base64.b64encode(read_file(args.image, config.watch.max_file_bytes).data).decode()
    answer = None if args.local else _ask_daemon(config, request)
    results = answer["results"] if answer else _search_locally(config, request)
    if args.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(table([(r["path"] or f"<row {r['id']} deleted meanwhile>", r["similarity"]) for r in results]))
    return 0


def cmd_health(config: Config) -> int:
    import urllib.error
    import urllib.request

    url = _daemon_url(config, "/healthz")
    if url is None:
        raise ConfigError("metrics.listen: the health check needs the daemon's HTTP endpoint, which is disabled")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        print(f"unhealthy: {'; '.join(body.get('problems', [])) or exc.reason}")
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: no daemon answers at {url} ({exc})")
        return 1
    print(f"ok: queue {body.get('queue_depth')}, index {body.get('index_size')} vectors")
    return 0


def _daemon_url(config: Config, path: str) -> str | None:
    from .config import metrics_address

    address = metrics_address(config)
    if address is None or address[1] == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address[0], address[0])
    return f"http://[{host}]:{address[1]}{path}" if ":" in host else f"http://{host}:{address[1]}{path}"


def _ask_daemon(config: Config, request: dict[str, object]) -> dict[str, Any] | None:
    """The running daemon's answer (its index and model are loaded), or None if no daemon of this store
    and table answers at metrics.listen."""
    import urllib.error
    import urllib.request

    url = _daemon_url(config, "/search")
    if url is None:
        return None
    body = json.dumps(request).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}),
                                    timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            raise ClipwatchError(json.loads(exc.read()).get("error", "bad request")) from None
        return None
    except (OSError, ValueError):
        return None  # no daemon there: search locally
    if answer.get("table") != config.store.table or answer.get("store") != config.store_url.redacted():
        return None  # a daemon of another store or table
    log.debug("searched_by_daemon", url=url)
    return answer


def _search_locally(config: Config, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Load every vector of the configured model from the store, then search."""
    from .embedder import Embedder, model_identity
    from .search import query_vector, search_top
    from .store import open_store
    from .sync import load_index

    def embedder() -> Embedder:
        model = Embedder.from_config(config.model)
        model.load()
        return model

    store = open_store(config)
    try:
        dimension = store.table_dimension()
        if dimension is None:
            raise ClipwatchError(f"table {config.store.table!r} does not exist yet in {store.location()}")
        query = query_vector(request, dimension, embedder, config.model.max_image_pixels)
        index, _ = load_index(store, model_identity(config.model.name), dimension)
        hits = index.search(query, search_top(request))
        paths = store.paths_of([i for i, _ in hits])
    finally:
        store.close()
    return [{"id": i, "path": paths.get(i), "similarity": round(s, 6)} for i, s in hits]


def _embed_file(config: Config, embedder: Embedder, path: str) -> np.ndarray:
    """A file's vector, prepared exactly as the worker prepares it."""
    from .files import read_file

    data = read_file(path, config.watch.max_file_bytes).data
    return embedder.embed_images([embedder.prepare(data, config.model.max_image_pixels)])[0]


def cmd_compare(config: Config, a: str, b: str, metric: str) -> int:
    from .embedder import Embedder
    from .search import compare, read_vector_argument

    vectors = [read_vector_argument(a, "A"), read_vector_argument(b, "B")]
    if any(v is None for v in vectors):
        embedder = Embedder.from_config(config.model)
        embedder.load()
        vectors = [v if v is not None else _embed_file(config, embedder, arg)
                   for v, arg in zip(vectors, (a, b), strict=True)]
    print(f"{compare(vectors[0], vectors[1], metric):.6f}")  # type: ignore[arg-type]
    return 0


def cmd_import(config: Config, path: str) -> int:
    from .importer import import_file
    from .service import Service

    service = Service.opened(config, watching=False)
    try:
        summary = import_file(service, sys.stdin if path == "-" else path)
    finally:
        service.close()
    print(f"import: {summary.lines} lines, {summary.imported} imported ({summary.duplicate} duplicate, "
          f"{summary.prohibited} prohibited, {summary.rejected} rejected), {summary.bad} bad")
    return 1 if summary.bad else 0


def cmd_db_init(config: Config, dimension: int | None) -> int:
    from .embedder import Embedder
    from .store import open_store

    if dimension is None:
        embedder = Embedder.from_config(config.model)
        embedder.load()
        dimension = embedder.dimension
    if dimension < 1:
        raise ConfigError(f"--dimension: expected a positive integer, got {dimension}")
    store = open_store(config)
    try:
        created = store.init_schema(dimension)
        state = "created" if created else "already exists"
        print(f"table {config.store.table!r} in {store.location()}: {state} (vectors of dimension {dimension})")
    finally:
        store.close()
    return 0


def cmd_db_status(config: Config, as_json: bool) -> int:
    from .store import open_store

    store = open_store(config)
    try:
        st = store.status()
    finally:
        store.close()
    if as_json:
        print(json.dumps({"backend": st.backend, "location": st.location, "table": st.table,
                          "dimension": st.dimension,
                          "rows": [{"status": s, "model": m, "count": n} for s, m, n in st.counts]}))
        return 0
    print(f"store:     {st.location} ({st.backend})")
    print(f"table:     {st.table}" + ("" if st.dimension else " (does not exist yet: run `clipwatch db init`)"))
    print(f"dimension: {st.dimension or '-'}")
    print(f"rows:      {sum(n for *_, n in st.counts)}")
    for s, m, n in st.counts:
        print(f"  {n:>10}  status={s}  model={m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
