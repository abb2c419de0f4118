"""Exceptions shared by every stage (a leaf module, so that nothing imports in a loop)."""

from __future__ import annotations

from .vocab import FILE_REASONS, Reason


class ClipwatchError(Exception):
    """Base class: an error clipwatch reports to the user with a clear message."""


class ConfigError(ClipwatchError):
    """The configuration is invalid; the message names the key and what was expected."""


class ModelLoadError(ClipwatchError):
    """The embedding model could not be loaded (no network, bad path, not a CLIP model)."""


class StoreError(ClipwatchError):
    """The vector store could not be reached or refused an operation. Every driver error becomes one
    (`SQLStore._guard`), so that callers retry exactly one exception type."""


class SchemaMismatch(StoreError):
    """The table exists but was made for another vector dimension (another model)."""


class FileRejected(ClipwatchError):
    """One file cannot be ingested. `reason` is a metric label; the message says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        if reason not in FILE_REASONS:
            raise ValueError(f"{reason!r} is not a reason to refuse a file")
        super().__init__(message)
        self.reason = reason
