"""The judge: is an entry a duplicate of another file, or close to a prohibited reference?

What a verdict compares, and what it never does:

- **prohibited**: first the entry's hashes against the hash lists (banks.py: sha256, MD5, PDQ with its
  rotations and flips; `signal` and `pdq_distance` say which and how close), then its vector against the
  reference images and prompts (`prohibited.*_threshold`; signal `clip`). A bank or reference whose label a
  person dismissed for these bytes is skipped. Prohibited wins over duplicate. The action is
  `prohibited.actions[signal]`, else `prohibited.action`.
- **duplicate**, by three signals, the strongest that finds a match deciding (`Verdict.signal`):
  1. `sha256`: the same bytes stored under another row (the oldest such row), or in an entry judged
     earlier in the same batch: score 1.0.
  2. `pdq`: a copy, by Meta's perceptual hash: the stored row (any instance) or earlier entry
     whose PDQ hash is nearest, at most `duplicates.pdq_distance` bits away, both hashes of quality >=
     `duplicates.pdq_min_quality`. It flags on its own, whatever CLIP says; the score is still the two
     vectors' cosine. A mirrored or rotated copy is found among the CLIP candidates: one whose hash is
     within the limit of one of the file's eight rotations and flips (`_turned`).
  3. `clip`: the most similar stored row, or entry judged earlier in the batch, at or above
     `duplicates.threshold`: a look-alike (or a copy PDQ misses: a crop, a frame).
  The action is `duplicates.actions[signal]`, else `duplicates.action`. `pdq_distance` is recorded
  whenever both files have a usable hash, whichever signal decided.
- A file is never compared with itself: not with its own row (`Entry.own_id`), not with an earlier
  version of itself, not with any row the batch rewrites or deletes (`Evidence.excluded`), not with
  a row that is itself a duplicate of this file's earlier version (which would make two copies point at
  each other with no original), and not with a row of the same path held by another instance of this
  host (`Evidence.same_file`: the same file under another instance name, whatever the names say).
- A pair a person dismissed (`clipwatch dismiss`) is skipped; the next best match may still flag the file.
- Entries are judged in the order given (the planner's: oldest first), so among copies judged together
  the oldest is the original. An entry that will be rejected (moved away without a row) is no candidate
  for the entries after it.

Pure but for the in-memory index it searches; `shas_of` is asked only about candidates of files whose
bytes are part of a dismissed pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .banks import BankMatch
from .config import Config
from .dbindex import SimilarityIndex
from .decisions import Decisions
from .pdq import distance, usable
from .pdqindex import PerceptualIndex
from .planner import Entry
from .references import References
from .store import SameBytes
from .vocab import Action, Signal, Status

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
    signal: Signal | None = None  # what decided the verdict
    pdq_distance: int | None = None  # PDQ bits between the file and its match (a row, or a bank's hash)


@dataclass(frozen=True)
class Evidence:
    """What the judge needs from the store beside the entries (fetched by the worker)."""

    same_bytes: Mapping[str, Sequence[SameBytes]] = field(default_factory=dict)
    excluded: frozenset[int] = frozenset()  # rows rewritten or deleted by the batch
    copies_of: Mapping[int, frozenset[int]] = field(default_factory=dict)  # row -> rows that are duplicates of it
    same_file: Mapping[str, frozenset[int]] = field(default_factory=dict)  # path -> this host's other rows of it


ShasOf = Callable[[Sequence[int]], Mapping[int, str]]
VectorsOf = Callable[[Sequence[int]], Mapping[int, np.ndarray]]


class Judge:
    def __init__(self, config: Config, model: str, index: SimilarityIndex, references: References,
                 decisions: Decisions, copies: PerceptualIndex | None = None) -> None:
        self.duplicates, self.prohibited, self.model = config.duplicates, config.prohibited, model
        self.gated = bool(config.watch.publish_dir)
        self.index, self.references, self.decisions = index, references, decisions
        self.copies = copies if self.duplicates.pdq_distance >= 0 else None  # the PDQ index; None: signal off
        self._vectors_of: VectorsOf | None = None

    def judge(self, entries: Sequence[Entry], evidence: Evidence, shas_of: ShasOf,
              vectors_of: VectorsOf | None = None) -> list[Verdict]:
        """A verdict per entry (in order). Entries of another model than the configured one are not judged.
        `vectors_of`: stored vectors the index does not hold (the score of a PDQ match)."""
        judged = [j for j, e in enumerate(entries) if e.vector is not None and e.model == self.model]
        verdicts = [Verdict() for _ in entries]
        if not judged:
            return verdicts
        self._vectors_of = vectors_of
        vectors = np.stack([entries[j].vector for j in judged])  # type: ignore[misc]
        banked = self._banked([entries[j] for j in judged])
        candidates = self._candidates([entries[j] for j in judged], vectors, evidence)
        copies = self._copies([entries[j] for j in judged], evidence)
        wanted = [i for j, c, p in zip(judged, candidates, copies, strict=True)
                  if self.decisions.involves(entries[j].sha256) for i, _ in [*c, *p]]
        shas = shas_of(wanted) if wanted else {}
        similar = vectors @ vectors.T  # entries of the batch against each other
        earlier: list[int] = []  # positions (in `judged`) of entries judged so far that will have a row
        for n, j in enumerate(judged):
            entry = entries[j]
            skip = evidence.same_file.get(entry.path, frozenset()) | (
                evidence.copies_of.get(entry.own_id, frozenset()) if entry.own_id is not None else frozenset())
            stored = [(i, s) for i, s in candidates[n] if i not in skip]
            copied = [(i, bits) for i, bits in copies[n] if i not in skip]
            verdict = self._prohibited(entry, vectors[n], banked[n], stored) or self._verdict(
                entry, vectors[n], stored, copied, shas, evidence, skip,
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
                  if (e.own_id is not None and e.own_id in evidence.copies_of) or self.decisions.involves(e.sha256)
                  or e.path in evidence.same_file]
        if closer:
            for n, hits in zip(closer, self.index.search_many(vectors[closer], CANDIDATES, evidence.excluded),
                               strict=True):
                found[n] = hits
        return found

    def _copies(self, entries: list[Entry], evidence: Evidence) -> list[list[tuple[int, int]]]:
        """The stored rows nearest by PDQ (id, bits), within `duplicates.pdq_distance`, of each entry whose
        hash is usable; [] for the others."""
        found: list[list[tuple[int, int]]] = [[] for _ in entries]
        asking = [n for n, e in enumerate(entries) if self._usable(e)]
        if self.copies is None or not asking:
            return found
        hits = self.copies.nearest_many([entries[n].hashes.pdq for n in asking],  # type: ignore[union-attr,misc]
                                        CANDIDATES, evidence.excluded)
        for n, near in zip(asking, hits, strict=True):
            found[n] = [(i, bits) for i, bits in near if bits <= self.duplicates.pdq_distance]
        return found

    def _usable(self, entry: Entry) -> bool:
        return (self.copies is not None and entry.hashes is not None and entry.hashes.pdq is not None
                and usable(entry.hashes.pdq_quality, self.duplicates.pdq_min_quality))

    def _banked(self, entries: list[Entry]) -> list[BankMatch | None]:
        banks = self.references.banks
        if banks is None or not banks.enabled:
            return [None] * len(entries)
        return banks.match_many([(e.sha256, e.hashes) for e in entries], self.decisions.labels_dismissed)

    def _prohibited(self, entry: Entry, vector: np.ndarray, bank: BankMatch | None,
                    stored: list[tuple[int, float]]) -> Verdict | None:
        """A hash list's match, else the reference image or prompt the vector is close to, else None."""
        nearest = stored[0][1] if stored else None
        if bank is not None:  # behind a publish gate never public: `flag` would publish it, so it quarantines
            action = self.prohibited.action_for(bank.signal)
            action = Action.QUARANTINE if action == Action.FLAG and self.gated else action
            return Verdict(Status.PROHIBITED, label=bank.bank, nearest=nearest, signal=bank.signal,
                           pdq_distance=bank.distance, action=self._action(entry, action))
        ref = self.references.match(vector, self.decisions.labels_dismissed(entry.sha256)) if (
            self.references.enabled) else None
        if ref is None:
            return None
        return Verdict(Status.PROHIBITED, score=ref.score, label=ref.label, nearest=nearest, signal=Signal.CLIP,
                       action=self._action(entry, self.prohibited.action_for(Signal.CLIP)))

    def _verdict(self, entry: Entry, vector: np.ndarray, stored: list[tuple[int, float]],
                 copied: list[tuple[int, int]], shas: Mapping[int, str], evidence: Evidence, skip: frozenset[int],
                 earlier: list[tuple[Entry, float]]) -> Verdict:
        nearest = stored[0][1] if stored else None
        if not self.duplicates.enabled:
            return Verdict(nearest=nearest)
        match = (self._exact(entry, evidence, skip, earlier) or self._pdq(entry, vector, copied, shas, earlier)
                 or self._turned(entry, stored, shas, earlier) or self._near(entry, stored, shas, earlier))
        if match is None or (match.signal == Signal.CLIP and (match.score is None
                                                              or match.score < self.duplicates.threshold)):
            return Verdict(nearest=nearest)
        assert match.signal is not None
        return replace(match, status=Status.DUPLICATE, nearest=nearest,
                       action=self._action(entry, self.duplicates.action_for(match.signal)))

    def _exact(self, entry: Entry, evidence: Evidence, skip: frozenset[int],
               earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """The oldest stored row with the same bytes, else the first entry of the batch with them."""
        if self.decisions.pair_dismissed(entry.sha256, entry.sha256):
            return None
        for copy in evidence.same_bytes.get(entry.sha256, ()):
            row = copy.row
            if row.model == entry.model and row.id not in evidence.excluded and row.id not in skip:
                return Verdict(score=1.0, match_id=row.id, signal=Signal.SHA256)
        for other, _ in earlier:
            if other.sha256 == entry.sha256:
                return Verdict(score=1.0, match_key=other.key, signal=Signal.SHA256)
        return None

    def _pdq(self, entry: Entry, vector: np.ndarray, copied: list[tuple[int, int]], shas: Mapping[int, str],
             earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """The nearest stored row or earlier entry by PDQ within the limit, leaving out dismissed pairs."""
        if not self._usable(entry):
            return None
        best: tuple[int, Verdict] | None = None
        for row_id, stored_bits in copied:  # nearest first
            if not self.decisions.pair_dismissed(entry.sha256, shas.get(row_id, "")):
                best = (stored_bits, Verdict(score=self._score(vector, row_id), match_id=row_id))
                break
        for other, score in earlier:
            bits = self._bits(entry, other)
            if (bits is not None and bits <= self.duplicates.pdq_distance and (best is None or bits < best[0])
                    and not self.decisions.pair_dismissed(entry.sha256, other.sha256)):
                best = (bits, Verdict(score=score, match_key=other.key))
        return None if best is None else replace(best[1], signal=Signal.PDQ, pdq_distance=best[0])

    def _turned(self, entry: Entry, stored: list[tuple[int, float]], shas: Mapping[int, str],
                earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """A mirrored or rotated copy: the CLIP candidates (the nearest stored rows; the batch's earlier
        entries) whose hash is within the limit of one of the entry's eight rotations and flips. The PDQ index
        is asked for the hash as it is only: eight lookups per image would cost eight times as much."""
        if not self._usable(entry) or not entry.hashes or not entry.hashes.dihedral:
            return None
        limit, variants = self.duplicates.pdq_distance, entry.hashes.dihedral
        for row_id, score in stored:
            code = self.copies.code_of(row_id) if self.copies is not None else None
            bits = None if code is None else min(distance(v, code) for v in variants)
            if bits is not None and bits <= limit and not self.decisions.pair_dismissed(entry.sha256,
                                                                                        shas.get(row_id, "")):
                return Verdict(score=score, match_id=row_id, signal=Signal.PDQ, pdq_distance=bits)
        for other, score in earlier:
            if self._usable(other) and not self.decisions.pair_dismissed(entry.sha256, other.sha256):
                bits = min(distance(v, other.hashes.pdq) for v in variants)  # type: ignore[union-attr,arg-type]
                if bits <= limit:
                    return Verdict(score=score, match_key=other.key, signal=Signal.PDQ, pdq_distance=bits)
        return None

    def _score(self, vector: np.ndarray, row_id: int) -> float | None:
        """The CLIP similarity to a stored row (a PDQ match's score)."""
        other = self.index.get(row_id)
        if other is None and self._vectors_of is not None:
            other = self._vectors_of([row_id]).get(row_id)
        return None if other is None else float(vector @ other)

    def _bits(self, entry: Entry, other: Entry) -> int | None:
        if not (self._usable(entry) and self._usable(other)):
            return None
        return distance(entry.hashes.pdq, other.hashes.pdq)  # type: ignore[union-attr,arg-type]

    def _stored_bits(self, entry: Entry, row_id: int) -> int | None:
        code = self.copies.code_of(row_id) if self.copies is not None and self._usable(entry) else None
        return None if code is None else distance(entry.hashes.pdq, code)  # type: ignore[union-attr,arg-type]

    def _near(self, entry: Entry, stored: list[tuple[int, float]], shas: Mapping[int, str],
              earlier: list[tuple[Entry, float]]) -> Verdict | None:
        """The most similar stored row or earlier entry, leaving out pairs a person dismissed."""
        best: Verdict | None = None
        for row_id, score in stored:  # best first
            if not self.decisions.pair_dismissed(entry.sha256, shas.get(row_id, "")):
                best = Verdict(score=score, match_id=row_id, signal=Signal.CLIP,
                               pdq_distance=self._stored_bits(entry, row_id))
                break
        for other, score in earlier:
            if (best is None or score > (best.score or -2.0)) and not self.decisions.pair_dismissed(
                    entry.sha256, other.sha256):
                best = Verdict(score=score, match_key=other.key, signal=Signal.CLIP,
                               pdq_distance=self._bits(entry, other))
        return best

    def _action(self, entry: Entry, configured: Action) -> Action:
        """A stored row judged again stays where it is: actions are taken when a file arrives."""
        return Action.FLAG if entry.rejudge else configured
