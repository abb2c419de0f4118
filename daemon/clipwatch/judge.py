"""The judge: is an entry a duplicate of another file, or close to a prohibited reference?

What a verdict compares, and what it never does:

- **prohibited**: the entry's vector against the reference images and prompts (`prohibited.*_threshold`);
  a reference whose label a person dismissed for these bytes is skipped. Prohibited wins over duplicate.
- **exact duplicate**: the same bytes stored under another row (the oldest such row), or in an entry
  judged earlier in the same batch: score 1.0.
- **near duplicate**: the most similar stored row, or entry judged earlier in the batch, at or above
  `duplicates.threshold`.
- A file is never compared with itself: not with its own row (`Entry.own_id`), not with an earlier
  version of itself, not with any row the batch rewrites or deletes (`Evidence.excluded`), and not with
  a row that is itself a duplicate of this file's earlier version (which would make two copies point at
  each other with no original).
- A pair a person dismissed (`clipwatch dismiss`) is skipped; the next best match may still flag the file.
- Entries are judged in the order given (the planner's: oldest first), so among copies judged together
  the oldest is the original. An entry that will be rejected (moved away without a row) is no candidate
  for the entries after it.

Pure but for the in-memory index it searches; `shas_of` is asked only about candidates of files whose
bytes are part of a dismissed pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import Config
from .dbindex import SimilarityIndex
from .decisions import Decisions
from .planner import Entry
from .references import References
from .store import SameBytes
from .vocab import Action, Status

CANDIDATES = 8  # stored rows looked at for a file whose nearest ones may be dismissed or its own copies


@dataclass(frozen=True)
class Verdict:
    status: Status = Status.OK
    score: float | None = None
    match_id: int | None = None  # the stored row matched
    match_key: int | None = None  # an entry of the same batch (its row has no id until the batch commits)
    label: str | None = None
    nearest: float | None = None  # similarity to the nearest other stored image, whatever the verdict
    action: Action = Action.FLAG


@dataclass(frozen=True)
class Evidence:
    """What the judge needs from the store beside the entries (fetched by the worker)."""

    same_bytes: Mapping[str, Sequence[SameBytes]] = field(default_factory=dict)
    excluded: frozenset[int] = frozenset()  # rows rewritten or deleted by the batch
    copies_of: Mapping[int, frozenset[int]] = field(default_factory=dict)  # row -> rows that are duplicates of it


ShasOf = Callable[[Sequence[int]], Mapping[int, str]]


class Judge:
    def __init__(self, config: Config, model: str, index: SimilarityIndex, references: References,
                 decisions: Decisions) -> None:
        self.duplicates, self.prohibited, self.model = config.duplicates, config.prohibited, model
        self.index, self.references, self.decisions = index, references, decisions

    def judge(self, entries: Sequence[Entry], evidence: Evidence, shas_of: ShasOf) -> list[Verdict]:
        """A verdict per entry (in order). Entries of another model than the configured one are not judged."""
        judged = [j for j, e in enumerate(entries) if e.vector is not None and e.model == self.model]
        verdicts = [Verdict() for _ in entries]
        if not judged:
            return verdicts
        vectors = np.stack([entries[j].vector for j in judged])  # type: ignore[misc]
        candidates = self._candidates([entries[j] for j in judged], vectors, evidence)
        wanted = [i for j, c in zip(judged, candidates, strict=True) if self.decisions.involves(entries[j].sha256)
                  for i, _ in c]
        shas = shas_of(wanted) if wanted else {}
        similar = vectors @ vectors.T  # entries of the batch against each other
        earlier: list[int] = []  # positions (in `judged`) of entries judged so far that will have a row
        for n, j in enumerate(judged):
            entry = entries[j]
            skip = evidence.copies_of.get(entry.own_id, frozenset()) if entry.own_id is not None else frozenset()
            stored = [(i, s) for i, s in candidates[n] if i not in skip]
            verdict = self._verdict(entry, vectors[n], stored, shas, evidence, skip,
                                    [(entries[judged[k]], float(similar[n, k])) for k in earlier])
            verdicts[j] = verdict
            if verdict.action != Action.REJECT:
                earlier.append(n)
        return verdicts

    def _candidates(self, entries: list[Entry], vectors: np.ndarray, evidence: Evidence) -> list[
            list[tuple[int, float]]]:
        """The nearest stored row of each entry; the CANDIDATES nearest where the nearest may not count."""
        found = self.index.search_many(vectors, 1, evidence.excluded)
        closer = [n for n, e in enumerate(entries)
                  if (e.own_id is not None and e.own_id in evidence.copies_of) or self.decisions.involves(e.sha256)]
        if closer:
            for n, hits in zip(closer, self.index.search_many(vectors[closer], CANDIDATES, evidence.excluded),
                               strict=True):
                found[n] = hits
        return found

    def _verdict(self, entry: Entry, vector: np.ndarray, stored: list[tuple[int, float]], shas: Mapping[int, str],
                 evidence: Evidence, skip: frozenset[int], earlier: list[tuple[Entry, float]]) -> Verdict:
        nearest = stored[0][1] if stored else None
        if self.references.enabled:
            ref = self.references.match(vector, self.decisions.labels_dismissed(entry.sha256))
            if ref is not None:
                return Verdict(Status.PROHIBITED, score=ref.score, label=ref.label, nearest=nearest,
                               action=self._action(entry, self.prohibited.action))
        if not self.duplicates.enabled:
            return Verdict(nearest=nearest)
        match = self._exact(entry, evidence, skip, earlier) or self._near(entry, stored, shas, earlier)
        if match is None or match.score is None or match.score < self.duplicates.threshold:
            return Verdict(nearest=nearest)
        return Verdict(Status.DUPLICATE, match.score, match.match_id, match.match_key, nearest=nearest,
                       action=self._action(entry, self.duplicates.action))

    def _exact(self, entry: Entry, evidence: Evidence, skip: frozenset[int],
               earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """The oldest stored row with the same bytes, else the first entry of the batch with them."""
        if self.decisions.pair_dismissed(entry.sha256, entry.sha256):
            return None
        for copy in evidence.same_bytes.get(entry.sha256, ()):
            row = copy.row
            if row.model == entry.model and row.id not in evidence.excluded and row.id not in skip:
                return Verdict(score=1.0, match_id=row.id)
        for other, _ in earlier:
            if other.sha256 == entry.sha256:
                return Verdict(score=1.0, match_key=other.key)
        return None

    def _near(self, entry: Entry, stored: list[tuple[int, float]], shas: Mapping[int, str],
              earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """The most similar stored row or earlier entry, leaving out pairs a person dismissed."""
        best: Verdict | None = None
        for row_id, score in stored:  # best first
            if not self.decisions.pair_dismissed(entry.sha256, shas.get(row_id, "")):
                best = Verdict(score=score, match_id=row_id)
                break
        for other, score in earlier:
            if (best is None or score > (best.score or -2.0)) and not self.decisions.pair_dismissed(
                    entry.sha256, other.sha256):
                best = Verdict(score=score, match_key=other.key)
        return best

    def _action(self, entry: Entry, configured: Action) -> Action:
        """A stored row judged again stays where it is: actions are taken when a file arrives."""
        return Action.FLAG if entry.rejudge else configured
