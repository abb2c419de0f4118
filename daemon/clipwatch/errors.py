"""Exceptions shared by every stage (a leaf module, so that nothing imports in a loop)."""

from __future__ import annotations


class ClipwatchError(Exception):
    """Base class: an error clipwatch reports to the user with a clear message."""


class ConfigError(ClipwatchError):
    """The configuration is invalid; the message names the key and what was expected."""


class ModelLoadError(ClipwatchError):
    """The embedding model could not be loaded (no network, bad path, not a CLIP model)."""


class StoreError(ClipwatchError):
    """The vector store could not be reached or refused an operation."""


class SchemaMismatch(StoreError):
    """The table exists but was made for another vector dimension (another model)."""


class FileRejected(ClipwatchError):
    """One file cannot be ingested. `reason` is one of REASONS (a metric label); the message says why."""

    REASONS = (
        "not_found",
        "not_a_file",
        "empty",
        "too_large",
        "unreadable",
        "bad_name",
        "not_an_image",
        "decode_error",
        "too_many_pixels",
        "embed_error",
    )

    def __init__(self, reason: str, message: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason = reason
