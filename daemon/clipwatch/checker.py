"""Verdicts at ingest: is a new image a duplicate of a stored one, or close to a prohibited reference?

- exact duplicate: the same bytes (sha256) are stored under another path: score 1.0, no model call;
- near duplicate: cosine similarity to the nearest stored vector, or to an image earlier in the same
  batch, at or above `duplicates.threshold`;
- prohibited: close to a reference image or prompt (`prohibited.*_threshold`). Prohibited wins over
  duplicate when both apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .config import Config
from .index import VectorIndex
from .references import References

Status = Literal["ok", "duplicate", "prohibited"]


@dataclass(frozen=True)
class Verdict:
    status: Status = "ok"
    score: float | None = None
    match_id: int | None = None  # the stored row matched
    match_path: str | None = None  # an image earlier in the same batch, which has no id yet
    label: str | None = None
    nearest: float | None = None  # similarity to the nearest stored image, whatever the verdict


@dataclass(frozen=True)
class Earlier:
    """An image earlier in the batch that will be stored: candidates for duplicates within the batch."""

    path: str
    vector: np.ndarray


class Checker:
    def __init__(self, config: Config, index: VectorIndex, references: References) -> None:
        self.duplicates = config.duplicates
        self.index = index
        self.references = references

    def judge(self, vector: np.ndarray, nearest: tuple[int, float] | None, earlier: list[Earlier],
              exact_id: int | None = None, exact_path: str | None = None) -> Verdict:
        """`nearest`: the stored row nearest to `vector` (`index.nearest_many` for a whole batch), or None
        if the index is empty.
        `exact_id`/`exact_path`: a stored row (or an earlier image of the batch) with the same bytes."""
        near_score = nearest[1] if nearest else None
        ref = self.references.match(vector) if self.references.enabled else None
        if ref is not None:
            return Verdict("prohibited", score=ref.score, label=ref.label, nearest=near_score)
        if not self.duplicates.enabled:
            return Verdict(nearest=near_score)
        if exact_id is not None or exact_path is not None:
            return Verdict("duplicate", score=1.0, match_id=exact_id, match_path=exact_path, nearest=1.0)
        best_id, best_path, best = None, None, -2.0
        if nearest is not None:
            best_id, best = nearest
        for e in earlier:
            score = float(e.vector @ vector)
            if score > best:
                best_id, best_path, best = None, e.path, score
        if best >= self.duplicates.threshold:
            return Verdict("duplicate", score=best, match_id=best_id, match_path=best_path, nearest=near_score)
        return Verdict(nearest=near_score)
