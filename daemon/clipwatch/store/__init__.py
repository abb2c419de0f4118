"""Vector stores behind one interface: MySQL 9 and MariaDB 11.7+ (`VECTOR` columns) and SQLite (the
embedded default)."""

from __future__ import annotations

from .. import instance
from ..config import Config
from .base import PAGE, Store
from .records import (
    ActionRecord,
    Applied,
    ChangePage,
    DecisionRecord,
    Delete,
    DeleteTree,
    FinishMove,
    FlaggedRow,
    ForgetDecision,
    JournalMove,
    Op,
    PendingMove,
    RecordAction,
    RecordDecision,
    Rename,
    ReviewItem,
    ReviewQuery,
    SameBytes,
    SetVerdict,
    StoredFile,
    StoreStatus,
    Touch,
    Upsert,
)


def open_store(config: Config) -> Store:
    """Connect to the configured store (no schema work: see `Store.init_schema`), as this instance: store.instance,
    else the name kept in the data directory (instance.py). Raises StoreError, or ConfigError for the name."""
    store = _connect(config)
    if not store.instance:
        try:
            store.instance = instance.settle(config.data_dir, store, config.roots)
        except BaseException:
            store.close()
            raise
    return store


def _connect(config: Config) -> Store:
    url = config.store_url
    if url.scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url.path, config.store.table, config.store.instance)
    from .mysql import open_server

    return open_server(url, config.store_password, config.store.table, config.store.instance,
                       config.store.connect_timeout_s)


__all__ = ["PAGE", "ActionRecord", "Applied", "ChangePage", "DecisionRecord", "Delete", "DeleteTree", "FinishMove",
           "FlaggedRow", "ForgetDecision", "JournalMove", "Op", "PendingMove", "RecordAction", "RecordDecision",
           "Rename", "ReviewItem", "ReviewQuery", "SameBytes", "SetVerdict", "Store", "StoreStatus", "StoredFile",
           "Touch", "Upsert", "open_store"]
