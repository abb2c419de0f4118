"""MySQL 9: a `VECTOR(dim)` column, vectors sent as binary little-endian float32 parameters.

MySQL's `VECTOR(N)` is a maximum (a shorter vector is accepted) and a CHECK on `VECTOR_DIM` is refused
by the server, so `Store.check_vector` checks every vector's dimension before it is sent.
Raw bytes passed as a plain `%s` are sent as a character string and rejected by the VECTOR column:
`_binary %s` sends them as bytes (see docs/mysql9.md).
"""

from __future__ import annotations

import re
from typing import Any

import mysql.connector
from mysql.connector import errors as myerrors

from ..config import StoreURL
from ..errors import StoreError
from ..logs import get_logger
from .sql import SQLStore

log = get_logger(__name__)
ACCESS_DENIED = 1142  # "<command> denied to user"

AUX_TABLES = {
    "deleted": """
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        deleted_at DATETIME(6) NOT NULL,
        KEY deleted_at (deleted_at)""",
    "decisions": """
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        kind VARCHAR(16) CHARACTER SET ascii NOT NULL,
        sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        other VARCHAR(2048) NOT NULL,
        decision VARCHAR(16) CHARACTER SET ascii NOT NULL,
        decided_by VARCHAR(255) NOT NULL,
        score FLOAT NULL,
        row_id BIGINT UNSIGNED NULL,
        path VARCHAR(4096) NOT NULL,
        match_path VARCHAR(4096) NULL,
        decided_at DATETIME(6) NOT NULL,
        KEY sha256 (sha256)""",
    "moves": """
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        instance VARCHAR(255) NOT NULL,
        src VARCHAR(4096) NOT NULL,
        dest VARCHAR(4096) NOT NULL,
        action VARCHAR(16) CHARACTER SET ascii NOT NULL,
        sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        created_at DATETIME(6) NOT NULL,
        KEY instance (instance)""",
    "actions": """
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        instance VARCHAR(255) NOT NULL,
        deed VARCHAR(16) CHARACTER SET ascii NOT NULL,
        row_id BIGINT UNSIGNED NULL,
        path VARCHAR(4096) NOT NULL,
        dest VARCHAR(4096) NULL,
        restore MEDIUMTEXT NULL,
        undoes BIGINT UNSIGNED NULL,
        decided_by VARCHAR(255) NOT NULL,
        decided_at DATETIME(6) NOT NULL,
        KEY row_id (row_id),
        KEY undoes (undoes)""",
    "instances": """
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        host VARCHAR(255) NOT NULL,
        data_dir VARCHAR(4096) NOT NULL,
        pid INT NOT NULL,
        started_at DATETIME(6) NOT NULL,
        seen_at DATETIME(6) NOT NULL""",
}


# The columns issue 21 added (sqlbase.COLUMNS), as created with a new table and added to an older one.
ADDED = {
    "md5": "CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL",
    "pdq": "CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL",
    "pdq_quality": "SMALLINT NULL",
    "signal": "VARCHAR(16) CHARACTER SET ascii NULL",
    "pdq_distance": "SMALLINT NULL",
}
ADDED_DDL = "".join(f"\n                `{name}` {kind}," for name, kind in ADDED.items())


class MySQLStore(SQLStore):
    backend = "mysql"
    PARAM = "%s"
    VECTOR_PARAM = "_binary %s"
    # The unique key is (instance, path_hash), a stored generated column: paths up to 4096 characters do not
    # fit an index, their SHA-256 does. The server hashes exactly the text it stores.
    PATH_MATCH = "path_hash = UNHEX(SHA2(%s, 256))"
    NOW = "UTC_TIMESTAMP(6)"
    GENERATED_NOT_NULL = " NOT NULL"  # MariaDB takes no NULL constraint on a stored generated column
    DRIVER_ERRORS = (myerrors.Error,)
    INSERT_IGNORE = "INSERT IGNORE"
    LOCK_ROW = " FOR UPDATE"
    DISTINCT_INSTANCES = "SELECT DISTINCT instance FROM {t}"
    TABLE_EXISTS = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
    UPSERT_TAIL = (
        " AS new ON DUPLICATE KEY UPDATE sha256 = new.sha256, size = new.size, mtime = new.mtime, "
        "model = new.model, embedding = new.embedding, status = new.status, match_id = new.match_id, "
        "score = new.score, label = new.label, md5 = new.md5, pdq = new.pdq, pdq_quality = new.pdq_quality, "
        "`signal` = new.`signal`, pdq_distance = new.pdq_distance, updated_at = UTC_TIMESTAMP(6)"
    )

    def __init__(self, url: StoreURL, password: str, table: str, instance: str, connect_timeout_s: int = 10,
                 conn: Any = None) -> None:
        super().__init__(table, instance)
        self.url = url
        self.conn: Any = conn or connect(url, password, connect_timeout_s)
        self._fetch("SET SESSION time_zone = '+00:00'")

    def location(self) -> str:
        return self.url.redacted()

    def quote(self, name: str) -> str:
        return f"`{name}`"

    def _describe(self, exc: BaseException) -> str:
        return describe(exc)

    def _cursor(self) -> Any:
        return self.conn.cursor()  # pings the server first: a dropped connection raises here

    def _commit(self) -> None:
        self.conn.commit()

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except myerrors.Error:
            pass  # the connection is gone: the server rolled the transaction back itself

    def table_dimension(self) -> int | None:
        """The dimension of the table's VECTOR column (None: no table). A table created by clipwatch on the
        other server kind (MySQL 9 / MariaDB: its comment says which) is refused: their VECTOR types, vector
        functions and indexes differ, so a table restored or replicated across is not used silently."""
        made_by = self._fetch("SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                              "AND TABLE_NAME = %s", (self.table,))
        kind = re.fullmatch(r"clipwatch (\w+)", _text(made_by[0][0]).strip()) if made_by else None
        if kind and kind.group(1) != self.backend:
            raise StoreError(f"table {self.table!r} was created by clipwatch on {kind.group(1)}, and this server "
                             f"({self.location()}) is {self.backend}: use a table made on this server (another "
                             "store.table, or `clipwatch db init` after exporting the rows) or point store.url at "
                             f"the {kind.group(1)} server")
        rows = self._fetch(
            "SELECT COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'embedding'", (self.table,))
        if not rows:
            return None
        column_type = _text(rows[0][0])
        match = re.fullmatch(r"vector\((\d+)\)", column_type.lower())
        if not match:
            raise StoreError(f"table {self.table!r} exists but its embedding column is {column_type!r}, not VECTOR")
        return int(match.group(1))

    def vector_search_missing(self) -> str | None:
        """MySQL 9 Community has neither a distance function nor a vector index (docs/mysql9.md). HeatWave and
        MySQL AI have `DISTANCE()`: probed, so that the reason names them, but not used: clipwatch's search in
        the database is built and tested on MariaDB only (no such server can be run here)."""
        try:
            self._fetch("SELECT DISTANCE(STRING_TO_VECTOR('[1]'), STRING_TO_VECTOR('[1]'), 'COSINE')")
        except StoreError:
            return "MySQL 9 Community has no vector distance function and no vector index"
        return ("this MySQL server has DISTANCE() (HeatWave or MySQL AI), but clipwatch's search in the database "
                "is built and tested on MariaDB 11.7+ only")

    def _vector_index_ddl(self) -> str:
        return ""  # MySQL: see vector_search_missing

    def create_table(self, dimension: int) -> None:
        # DDL cannot be parameterised: the table name is a validated identifier, the dimension an int.
        self._fetch(f"""
            CREATE TABLE IF NOT EXISTS {self.t} (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                instance VARCHAR(255) NOT NULL,
                path VARCHAR(4096) NOT NULL,
                path_hash BINARY(32) AS (UNHEX(SHA2(path, 256))) STORED{self.GENERATED_NOT_NULL},
                sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                size BIGINT UNSIGNED NOT NULL,
                mtime DOUBLE NOT NULL,
                model VARCHAR(255) NOT NULL,
                embedding VECTOR({int(dimension)}) NOT NULL,
                status VARCHAR(16) CHARACTER SET ascii NOT NULL DEFAULT 'ok',
                match_id BIGINT UNSIGNED NULL,
                score FLOAT NULL,
                label VARCHAR(255) NULL,{ADDED_DDL}
                created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                UNIQUE KEY instance_path (instance, path_hash),
                KEY instance_path_prefix (instance, path(255)),
                KEY sha256 (sha256),
                KEY updated_at (updated_at),
                KEY model_id (model, id),
                KEY match_id (match_id),
                KEY status_updated (status, updated_at){self._vector_index_ddl()}
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin COMMENT = 'clipwatch {self.backend}'
        """)

    def create_aux_tables(self) -> None:
        # Each is looked for first: CREATE TABLE IF NOT EXISTS needs the CREATE privilege even when the table
        # exists, and a daemon whose administrator ran `clipwatch db init` may have only row privileges.
        existing = {_text(r[0]) for r in self._fetch("SELECT TABLE_NAME FROM information_schema.TABLES "
                                                     "WHERE TABLE_SCHEMA = DATABASE()")}
        for suffix, columns in AUX_TABLES.items():
            if f"{self.table}_{suffix}" not in existing:
                self._fetch(f"CREATE TABLE IF NOT EXISTS {self.quote(self.table + '_' + suffix)} ({columns}\n"
                            ") ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin")
        if self.table in existing:
            self._add_match_index()
            self._add_columns()

    def _add_columns(self) -> None:
        """Tables made before clipwatch kept file hashes and a verdict's signal get those columns (ALTER
        privilege: without it, the start fails and says what to run)."""
        have = {_text(r[0]) for r in self._fetch("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                                                 "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (self.table,))}
        missing = [f"ADD COLUMN `{name}` {kind}" for name, kind in ADDED.items() if name not in have]
        if missing:
            sql = f"ALTER TABLE {self.t} {', '.join(missing)}"
            try:
                self._fetch(sql)
            except StoreError as exc:
                raise StoreError(f"table {self.table!r} needs the columns this version keeps (file hashes and "
                                 f"a verdict's signal) and they could not be added: {exc}. As an administrator, "
                                 f"run `clipwatch db init`, or: {sql}") from exc
            log.info("table_migrated", table=self.table, added=[m.split("`")[1] for m in missing])

    def _add_match_index(self) -> None:
        """Tables made by clipwatch 0.1 lack the index that finds a deleted row's duplicates."""
        if self._fetch("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                       "AND TABLE_NAME = %s AND INDEX_NAME = 'match_id'", (self.table,)):
            return
        try:
            self._fetch(f"ALTER TABLE {self.t} ADD INDEX match_id (match_id)")
        except StoreError as exc:
            if not isinstance(exc.__cause__, myerrors.Error) or exc.__cause__.errno != ACCESS_DENIED:
                raise
            log.warning("index_missing", table=self.table, index="match_id", error=str(exc),
                        fix=f"as an administrator: ALTER TABLE {self.table} ADD INDEX match_id (match_id)")

    def reconnect(self) -> None:
        try:
            self.conn.reconnect(attempts=1, delay=0)
            self._fetch("SET SESSION time_zone = '+00:00'")
        except (myerrors.Error, StoreError):
            pass

    def close(self) -> None:
        try:
            self.conn.close()
        except myerrors.Error:
            pass


def connect(url: StoreURL, password: str, connect_timeout_s: int) -> Any:
    kwargs: dict[str, Any] = dict(user=url.user, password=password, database=url.database,
                                  connection_timeout=connect_timeout_s, autocommit=False,
                                  charset="utf8mb4", collation="utf8mb4_bin", use_unicode=True)
    if url.path:
        kwargs["unix_socket"] = url.path
    else:
        kwargs.update(host=url.host, port=url.port)
    try:
        return mysql.connector.connect(**kwargs)
    except myerrors.Error as exc:
        raise StoreError(f"cannot connect to {url.redacted()}: {describe(exc)}") from None


def open_server(url: StoreURL, password: str, table: str, instance: str, connect_timeout_s: int) -> MySQLStore:
    """MySQL 9 or MariaDB 11.7+, told apart by the server's own answer (`mariadb://` must find MariaDB; on
    `mysql://` a MariaDB server is detected and used as one)."""
    conn = connect(url, password, connect_timeout_s)
    server = _text(conn.server_info)
    if "mariadb" in server.lower():
        from .mariadb import MariaDBStore

        return MariaDBStore(url, password, table, instance, connect_timeout_s, conn=conn)
    if url.scheme == "mariadb":
        conn.close()
        raise StoreError(f"store.url is {url.redacted()} but that server is MySQL {server}, not MariaDB: "
                         "write mysql:// for a MySQL server")
    return MySQLStore(url, password, table, instance, connect_timeout_s, conn=conn)


def describe(exc: BaseException) -> str:
    """The server's message without the driver's noise (it never contains the password)."""
    if isinstance(exc, myerrors.Error) and getattr(exc, "errno", None):
        return f"{exc.msg} (MySQL error {exc.errno})"
    return str(exc)


def _text(value: Any) -> str:
    """information_schema answers in bytes or str depending on the server's version."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
