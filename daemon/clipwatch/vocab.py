"""clipwatch's one vocabulary: the names that errors, metrics, logs, the worker and the CLI share.

A leaf module (it imports nothing of clipwatch): every value here is a metric label, a log field or a
database value, so it is spelt once. They are `StrEnum`s: each member *is* its string, so it goes into
SQL parameters, JSON and Prometheus labels as it is.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A row's verdict (the `status` column)."""

    OK = "ok"
    DUPLICATE = "duplicate"
    PROHIBITED = "prohibited"


class Action(StrEnum):
    """What happens to a flagged file (`duplicates.action`, `prohibited.action`)."""

    FLAG = "flag"  # the file stays; its row records the verdict
    QUARANTINE = "quarantine"  # the file moves to quarantine.dir; its row follows it
    REJECT = "reject"  # the file moves to quarantine.dir; no row
    PUBLISH = "publish"  # not a verdict's: a file that passed moves from incoming to watch.publish_dir


class Signal(StrEnum):
    """What decided a verdict (the `signal` column), strongest first: the same bytes (sha256; a hash list's
    MD5), a PDQ match (a copy: re-encoded, resized, lightly edited), a CLIP similarity (a look-alike, a copy
    PDQ misses, or a prohibited reference image or prompt)."""

    SHA256 = "sha256"
    MD5 = "md5"  # only hash lists match by MD5 (banks.py); duplicates by sha256
    PDQ = "pdq"
    CLIP = "clip"


BANK_SIGNALS = (Signal.SHA256, Signal.MD5, Signal.PDQ)  # what a prohibited verdict from a hash list rests on


VERDICT_ACTIONS = (Action.FLAG, Action.QUARANTINE, Action.REJECT)  # what duplicates/prohibited.action may be


class Decision(StrEnum):
    """What a person said about a verdict (`clipwatch dismiss` / `confirm`)."""

    DISMISSED = "dismissed"  # a false alarm: this pair is never flagged again
    CONFIRMED = "confirmed"  # the verdict was right


class ChangeKind(StrEnum):
    """One file system fact (or a request) on its way from the watcher or scanner to the worker."""

    UPSERT = "upsert"  # the file at `path` is complete: its row must match its content
    MOVE = "move"  # `path` was renamed to `dest`
    DELETE = "delete"  # `path` is gone
    DELETE_TREE = "delete_tree"  # the directory `path` is gone, with everything below it
    REJUDGE = "rejudge"  # the row at `path` lost the row it was a duplicate of: judge it again


class Source(StrEnum):
    """Where a change was seen (label of clipwatch_files_discovered_total)."""

    EVENT = "event"
    SCAN = "scan"
    RESCAN = "rescan"
    REPAIR = "repair"  # a verdict whose matched row is gone
    REVIEW = "review"  # a file released from the quarantine on the review page, to be judged again


class Result(StrEnum):
    """How the worker finished one change (label of clipwatch_files_processed_total)."""

    EMBEDDED = "embedded"  # a row written with a vector (new, changed, or an exact copy's reused vector)
    UNCHANGED = "unchanged"  # same bytes as its row: only size and mtime followed
    MOVED = "moved"  # the row followed its file to a new path
    DELETED = "deleted"  # the row of a file that is gone was removed
    FAILED = "failed"  # the file was refused (see Reason)
    REJECTED = "rejected"  # judged and moved to the quarantine without a row (action "reject")
    VANISHED = "vanished"  # the file was gone before it could be read (its own event follows)
    REJUDGED = "rejudged"  # a stored row judged again because its match is gone


class Stage(StrEnum):
    """Pipeline stages: the label of stage timings and of errors."""

    READ = "read"
    DECODE = "decode"
    EMBED = "embed"
    CHECK = "check"
    WRITE = "write"
    MOVE = "move"  # moving judged files to the quarantine, after their batch committed
    STORE = "store"
    SYNC = "sync"
    WORKER = "worker"
    WATCH = "watch"


class Reason(StrEnum):
    """Why something failed (label of clipwatch_errors_total, `reason` of `file_rejected`)."""

    NOT_FOUND = "not_found"
    NOT_A_FILE = "not_a_file"
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNREADABLE = "unreadable"
    BAD_NAME = "bad_name"
    NOT_AN_IMAGE = "not_an_image"
    DECODE_ERROR = "decode_error"
    TOO_MANY_PIXELS = "too_many_pixels"
    EMBED_ERROR = "embed_error"
    STORE_ERROR = "store_error"
    SYNC_ERROR = "sync_error"
    MOVE_FAILED = "move_failed"
    UNEXPECTED = "unexpected"
    INOTIFY_LIMIT = "inotify_limit"
    ROOT_MISSING = "root_missing"
    PUBLISH_NAME_TAKEN = "publish_name_taken"  # the file's name in watch.publish_dir holds another file
    INSTANCE_TAKEN = "instance_taken"  # another daemon claimed this instance's name: this one stops (instance.py)


class Deed(StrEnum):
    """What a person (or the daemon, for its own quarantines) did to a verdict: the history of actions."""

    DISMISSED = "dismissed"
    CONFIRMED = "confirmed"
    QUARANTINED = "quarantined"
    RELEASED = "released"
    UNDONE = "undone"


class Refusal(StrEnum):
    """Why the HTTP endpoint refused a request (label of clipwatch_http_refused_total)."""

    UNAUTHENTICATED = "unauthenticated"
    THROTTLED = "throttled"  # too many failed logins from that address
    CROSS_SITE = "cross_site"
    OFF = "off"  # review and search on a non-loopback address with no users file
    TOO_LARGE = "too_large"
    BUSY = "busy"  # every search slot stayed taken for search_timeout_s
    TOO_SLOW = "too_slow"


# The stage each reason belongs to: every (stage, reason) pair of clipwatch_errors_total.
REASON_STAGE: dict[Reason, Stage] = {
    Reason.NOT_FOUND: Stage.READ, Reason.NOT_A_FILE: Stage.READ, Reason.EMPTY: Stage.READ,
    Reason.TOO_LARGE: Stage.READ, Reason.UNREADABLE: Stage.READ, Reason.BAD_NAME: Stage.READ,
    Reason.NOT_AN_IMAGE: Stage.DECODE, Reason.DECODE_ERROR: Stage.DECODE, Reason.TOO_MANY_PIXELS: Stage.DECODE,
    Reason.EMBED_ERROR: Stage.EMBED,
    Reason.STORE_ERROR: Stage.STORE,
    Reason.SYNC_ERROR: Stage.SYNC,
    Reason.MOVE_FAILED: Stage.MOVE, Reason.PUBLISH_NAME_TAKEN: Stage.MOVE,
    Reason.UNEXPECTED: Stage.WORKER,
    Reason.INOTIFY_LIMIT: Stage.WATCH, Reason.ROOT_MISSING: Stage.WATCH,
}

# Reasons a single file is refused for (FileRejected).
FILE_REASONS = frozenset({Reason.NOT_FOUND, Reason.NOT_A_FILE, Reason.EMPTY, Reason.TOO_LARGE, Reason.UNREADABLE,
                          Reason.BAD_NAME, Reason.NOT_AN_IMAGE, Reason.DECODE_ERROR, Reason.TOO_MANY_PIXELS,
                          Reason.EMBED_ERROR})

# Refused files that errors.quarantine_dir takes; links, FIFOs and unreadable files stay where they are.
MOVABLE_REASONS = frozenset({Reason.EMPTY, Reason.TOO_LARGE, Reason.BAD_NAME, Reason.NOT_AN_IMAGE,
                             Reason.DECODE_ERROR, Reason.TOO_MANY_PIXELS, Reason.EMBED_ERROR})

# The stages whose time per batch is measured (clipwatch_stage_duration_seconds).
TIMED_STAGES = (Stage.READ, Stage.DECODE, Stage.EMBED, Stage.CHECK, Stage.WRITE, Stage.MOVE)
