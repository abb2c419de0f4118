"""What each `clipwatch` command does, once `cli.main` has parsed its arguments and loaded the configuration.

Heavy imports (torch, the drivers) happen inside the commands that need them, so `--help` and
`db status` start at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ClipwatchError, ConfigError
from .logs import get_logger
from .metrics import Metrics
from .scanner import ScanCounts
from .vocab import Decision, Result, Status

if TYPE_CHECKING:
    import numpy as np

    from .embedder import Embedder

log = get_logger("clipwatch")


def cmd_run(config: Config) -> int:
    from .instance import daemon_lock
    from .service import Service

    with daemon_lock(config.data_dir):  # one daemon per data directory (and so per instance name)
        return Service.opened(config, handle_signals=True, serving=True, claiming=True).run()


def cmd_scan(config: Config) -> int:
    """One reconcile, then a summary. Every file queued ends as a row or a counted failure: if any did not
    (a batch dropped by an unexpected error), it says so and exits 1."""
    from .service import Service

    service = Service.opened(config)
    progress = _progress if sys.stderr.isatty() else None
    try:
        counts = service.scan(progress)
    finally:
        service.close()
    if progress:
        print(file=sys.stderr)
    done = {r: service.metrics.processed_count(r) for r in Result}
    print(f"scan: {counts.files} image files, {counts.queued} new or changed, {counts.gone} gone; "
          + ", ".join(f"{r} {done[r]}" for r in SUMMARY if done[r] or r in SUMMARY[:4]))
    accounted = sum(done[r] for r in UPSERT_RESULTS)
    if accounted < counts.queued:
        print(f"scan: {counts.queued - accounted} of the files queued were not processed (see the log); "
              "the next scan takes them again", file=sys.stderr)
        return 1
    return 0


# The scan's summary, in order (the first four always shown), and how a queued (upserted) file can end.
SUMMARY = (Result.EMBEDDED, Result.UNCHANGED, Result.DELETED, Result.FAILED, Result.MOVED, Result.REJECTED,
           Result.VANISHED, Result.REJUDGED)
UPSERT_RESULTS = (Result.EMBEDDED, Result.UNCHANGED, Result.MOVED, Result.FAILED, Result.REJECTED, Result.VANISHED)


def _progress(counts: ScanCounts, metrics: Metrics) -> None:
    """A one-line progress bar on stderr: work done of the work found so far (the walk may still be going)."""
    done = sum(metrics.processed_count(r) for r in Result)
    todo = max(counts.queued + counts.gone + counts.repaired, done, 1)
    filled = int(30 * done / todo)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{todo} done, {counts.files} image files scanned ",
          end="", file=sys.stderr, flush=True)


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    import base64

    from .daemoncalls import ask_daemon
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
    answer = None if args.local else ask_daemon(config, request)
    results = answer["results"] if answer else _search_locally(config, request)
    if args.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(table([(r["path"] or f"<row {r['id']} deleted meanwhile>", r["similarity"]) for r in results]))
    return 0


def _search_locally(config: Config, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Search the database's vector index where the daemon would (index.where), else load every vector of the
    configured model from the store and search them."""
    from .dbindex import DatabaseIndex, SimilarityIndex
    from .embedder import Embedder, model_identity
    from .search import query_vector, search_top
    from .store import open_store
    from .sync import load_index

    def embedder() -> Embedder:
        model = Embedder.from_config(config.model, str(config.data_dir / "precision.json"))
        model.load()
        return model

    store = open_store(config)
    try:
        dimension = store.table_dimension()
        if dimension is None:
            raise ClipwatchError(f"table {config.store.table!r} does not exist yet in {store.location()}")
        query = query_vector(request, dimension, embedder, config.model.max_image_pixels)
        model = model_identity(config.model.name)
        index: SimilarityIndex
        if config.index.where != "memory" and store.vector_search_missing() is None and store.has_vector_index():
            index = DatabaseIndex(store, model, dimension, config.index.ef_search)  # the daemon's own answer
        else:
            index, _ = load_index(store, model, dimension)
        hits = index.search(query, search_top(request))
        paths = store.paths_of([i for i, _ in hits])
    finally:
        store.close()
    return [{"id": i, "path": paths.get(i), "similarity": round(s, 6)} for i, s in hits]


def _embed_file(config: Config, embedder: Embedder, path: str) -> np.ndarray:
    """A file's vector, prepared exactly as the worker prepares it."""
    from .files import read_file

    data = read_file(path, config.watch.max_file_bytes).data
    vector: np.ndarray = embedder.embed_images([embedder.prepare(data, config.model.max_image_pixels)])[0]
    return vector


def cmd_compare(config: Config, a: str, b: str, metric: str) -> int:
    from .embedder import Embedder
    from .search import compare, read_vector_argument

    vectors = [read_vector_argument(a, "A"), read_vector_argument(b, "B")]
    if any(v is None for v in vectors):
        embedder = Embedder.from_config(config.model, str(config.data_dir / "precision.json"))
        embedder.load()
        vectors = [v if v is not None else _embed_file(config, embedder, arg)
                   for v, arg in zip(vectors, (a, b), strict=True)]
    print(f"{compare(vectors[0], vectors[1], metric):.6f}")  # type: ignore[arg-type]
    return 0


def cmd_hash(config: Config, paths: list[str], as_json: bool) -> int:
    from .errors import FileRejected
    from .files import printable
    from .imaging import decode_image
    from .pdq import DRAFT_SIDE, pdq_of

    failed = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
            pdq, quality = pdq_of(decode_image(data, config.model.max_image_pixels, draft=DRAFT_SIDE))
        except (OSError, FileRejected) as exc:
            failed += 1
            print(f"clipwatch: {printable(path)}: {exc.strerror if isinstance(exc, OSError) else exc}", file=sys.stderr)
            continue
        line = {"path": path, "pdq": pdq.hex(), "quality": quality, "md5": hashlib.md5(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest()}
        print(json.dumps(line, ensure_ascii=False) if as_json else f"{pdq.hex()}  {quality:>3}  {line['md5']}  "
              f"{line['sha256']}  {printable(path)}")
    return 1 if failed else 0


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
    from .dbindex import init_schema
    from .embedder import Embedder
    from .store import open_store

    if dimension is None:
        embedder = Embedder.from_config(config.model, str(config.data_dir / "precision.json"))
        embedder.load()
        dimension = embedder.dimension
    if dimension < 1:
        raise ConfigError(f"--dimension: expected a positive integer, got {dimension}")
    store = open_store(config)
    try:
        where, created = init_schema(store, config.index, dimension)
        state = "created" if created else "already exists"
        search = "the database's vector index" if where == "database" else "in memory"
        print(f"table {config.store.table!r} in {store.location()}: {state} (vectors of dimension {dimension}; "
              f"similarity search: {search})")
    finally:
        store.close()
    return 0


def cmd_db_status(config: Config, as_json: bool) -> int:
    from .store import open_store

    store = open_store(config)
    try:
        st, instances, daemons = store.status(), store.instances(), store.registered()
    finally:
        store.close()
    if as_json:
        print(json.dumps({"backend": st.backend, "location": st.location, "table": st.table,
                          "dimension": st.dimension, "instance": store.instance, "data_dir": str(config.data_dir),
                          "rows": [{"status": s, "model": m, "count": n} for s, m, n in st.counts],
                          "instances": [{"instance": i, "count": n} for i, n in sorted(instances.items())],
                          "daemons": [{"instance": d.name, "host": d.host, "data_dir": d.data_dir, "pid": d.pid,
                                       "seen_s": round(d.seen_s, 1)} for d in daemons.values()]}))
        return 0
    print(f"store:     {st.location} ({st.backend})")
    print(f"table:     {st.table}" + ("" if st.dimension else " (does not exist yet: run `clipwatch db init`)"))
    print(f"dimension: {st.dimension or '-'}")
    print(f"instance:  {store.instance} (data directory {config.data_dir})")
    print(f"rows:      {sum(n for *_, n in st.counts)}")
    for s, m, n in st.counts:
        print(f"  {n:>10}  status={s}  model={m}")
    for i in sorted({*instances, *daemons}):
        d = daemons.get(i)
        print(f"  {instances.get(i, 0):>10}  instance={i}" + ("  (this one)" if i == store.instance else "")
              + (f"  daemon on {d.host} ({d.data_dir}, pid {d.pid}, seen {d.seen_s:.0f} s ago)" if d else ""))
    return 0


def cmd_verdicts(config: Config, status: str | None, as_json: bool, limit: int) -> int:
    from .review import print_verdicts
    from .store import open_store

    if limit < 0:
        raise ConfigError(f"--limit: expected 0 (all) or a positive integer, got {limit}")
    store = open_store(config)
    try:
        _require_table(store)
        print_verdicts(store.flagged(Status(status) if status else None), sys.stdout, as_json, limit)
    finally:
        store.close()
    return 0


def cmd_decide(config: Config, ids: list[int], decision: Decision, by: str | None) -> int:
    from .review import decide, default_decider
    from .store import open_store

    store = open_store(config)
    try:
        _require_table(store)
        for line in decide(store, ids, decision, by or default_decider()):
            print(line)
    finally:
        store.close()
    return 0


def _require_table(store: Any) -> None:
    """The table must exist; the tables beside it are made if an older clipwatch made it."""
    dimension = store.table_dimension()
    if dimension is None:
        raise ClipwatchError(f"table {store.table!r} does not exist yet in {store.location()}")
    store.init_schema(dimension)


def cmd_user_add(config: Config, name: str, from_stdin: bool) -> int:
    import getpass

    from .web.users import set_user

    if not config.http.users_file:
        raise ConfigError("http.users_file: name the file to write (in the config, or CLIPWATCH_HTTP__USERS_FILE)")
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise ClipwatchError("the two passwords differ; nothing written")
    existed = set_user(config.http.users_file, name, password)
    print(f"{'changed the password of' if existed else 'added'} {name} in {config.http.users_file}")
    return 0


def cmd_calibrate(config: Config, target: str, pairs: str | None, as_json: bool) -> int:
    from .calibration import Sample, pdq_report, read_pairs, report_for
    from .store import open_store

    kind = Status.DUPLICATE if target in ("duplicates", "pdq") else Status.PROHIBITED
    store = open_store(config)
    try:
        decisions = store.decisions()
        if target == "pdq":
            report = pdq_report(config, decisions, lambda shas: store.pdq_by_sha256(
                shas, config.duplicates.pdq_min_quality))
        elif target == "bank":
            from .bankcmd import bank_calibration

            report = bank_calibration(config, decisions, store)
    finally:
        store.close()
    labelled: list[Sample] = []
    if pairs:
        from .embedder import Embedder
        from .search import compare

        embedder = Embedder.from_config(config.model, str(config.data_dir / "precision.json"))
        embedder.load()
        labelled = read_pairs(pairs, lambda a, b: compare(_embed_file(config, embedder, a),
                                                         _embed_file(config, embedder, b), "cosine"))
    if target not in ("pdq", "bank"):
        report = report_for(config, decisions, kind, labelled)
    print(json.dumps(report.as_json()) if as_json else "\n".join(report.as_text()))
    return 0
