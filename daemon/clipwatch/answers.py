"""What the HTTP threads ask the daemon: `POST /search` and `POST /check`, on their own store connection.

`POST /check` gives the verdict ingest would give an image, and stores nothing.

For upload applications that want to refuse an upload before accepting it: the body is the image file's
bytes; the answer is the judge's verdict against the stored images and the prohibited references, as it
stands at that moment, and what the daemon would do with such a file (`action`: `publish` or `flag` for
a file that passes, else the configured action). Nothing is written: the same file arriving in a watched
directory a moment later is judged again, against whatever was stored meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config
from .dbindex import SimilarityIndex
from .decisions import Decisions
from .embedder import Embedder
from .judge import Evidence, Judge
from .pdq import FileHashes, hashes_of
from .pdqindex import PerceptualIndex
from .planner import Entry
from .references import References
from .search import BadVector, query_vector, search_top
from .store import Store
from .vocab import Action, Status


@dataclass(frozen=True)
class Upload:
    sha256: str
    hashes: FileHashes
    vector: np.ndarray


def embed_upload(data: bytes, embedder: Embedder, max_pixels: int) -> Upload:
    """The body's hashes and vector. Raises FileRejected (not an image, too many pixels) or BadVector."""
    if not data:
        raise BadVector("the body is empty: send the image file's bytes (curl --data-binary @FILE)")
    image = embedder.decode(data, max_pixels)
    vector: np.ndarray = embedder.embed_images([embedder.pixels_of(image)])[0]
    hashes = hashes_of(image, hashlib.md5(data).hexdigest())
    return Upload(hashlib.sha256(data).hexdigest(), hashes, vector)


def verdict_of(upload: Upload, config: Config, model: str, index: SimilarityIndex, store: Store,
               references: References, decisions: Decisions, copies: PerceptualIndex | None = None) -> dict[str, Any]:
    """The judge's verdict on an image that is not stored, and what would be done with it."""
    sha256 = upload.sha256
    entry = Entry(0, "", sha256, 0, 0.0, model, vector=upload.vector, on_disk=False, hashes=upload.hashes)
    judge = Judge(config, model, index, references, decisions, copies)
    verdict = judge.judge([entry], Evidence(store.find_by_sha256([sha256])), store.shas_of, store.vectors_of)[0]
    match_path = store.paths_of([verdict.match_id]).get(verdict.match_id) if verdict.match_id is not None else None
    action: Action | None = verdict.action
    if verdict.status == Status.OK or verdict.action == Action.FLAG:  # it passes
        action = Action.PUBLISH if config.watch.publish_dir else None if verdict.status == Status.OK else Action.FLAG
    return {"status": verdict.status, "action": action, "match_id": verdict.match_id, "match_path": match_path,
            "score": None if verdict.score is None else round(verdict.score, 6), "label": verdict.label,
            "nearest": None if verdict.nearest is None else round(verdict.nearest, 6), "sha256": sha256,
            "signal": verdict.signal, "pdq_distance": verdict.pdq_distance, "pdq": upload.hashes.pdq_hex,
            "pdq_quality": upload.hashes.pdq_quality}


class Answers:
    """The daemon's answers to searches and checks: the model outside the lock, the index and the store
    (the HTTP threads' own connection, shared with the review pages) under it."""

    def __init__(self, config: Config, embedder: Embedder, index: SimilarityIndex, store: Store, lock: threading.Lock,
                 references: References, decisions: Decisions, copies: PerceptualIndex | None = None) -> None:
        self.config, self.embedder, self.index, self.store, self.lock = config, embedder, index, store, lock
        self.references, self.decisions, self.copies = references, decisions, copies

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        query = query_vector(request, self.embedder.dimension, lambda: self.embedder,
                             self.config.model.max_image_pixels)
        with self.lock:  # the search in the database asks on the HTTP threads' connection
            hits = self.index.bound(self.store).search(query, search_top(request))
            paths = self.store.paths_of([i for i, _ in hits])
        return {"table": self.config.store.table, "store": self.store.location(), "index_size": len(self.index),
                "results": [{"id": i, "path": paths.get(i), "similarity": round(s, 6)} for i, s in hits]}

    def check(self, data: bytes) -> dict[str, Any]:
        upload = embed_upload(data, self.embedder, self.config.model.max_image_pixels)
        with self.lock:
            return verdict_of(upload, self.config, self.embedder.identity, self.index.bound(self.store),
                              self.store, self.references, self.decisions, self.copies)
