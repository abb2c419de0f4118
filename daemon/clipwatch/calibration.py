"""Thresholds learnt from decisions: precision and recall at each threshold, and the one to use.

A confirmed verdict is a positive (the pair was a duplicate, the image was prohibited), a dismissed one
a negative, each with the similarity the daemon measured; labelled pairs from a CSV file
(`path_a,path_b,same`) add more, measured with the model. For a threshold t, the verdicts at or above t
are the ones the daemon would make: precision = positives among them / all of them, recall = positives
among them / all positives.

The same for `duplicates.pdq_distance`, where *lower* is closer: a confirmed or dismissed duplicate whose
two files' PDQ hashes are still stored is a sample of their distance in bits, and the verdicts at or
below a distance d are the ones the daemon would make.

The same for `prohibited.bank_distance`: a decision about a hash-list match whose file's PDQ hash is still
stored is a sample of its distance to the bank's nearest hash.

The suggested threshold is the lowest t at which precision reaches `calibration.target_precision` and
stays there for every higher threshold (for distances: the highest d, and every lower one); a dip above it
would mean a stricter setting flags more false alarms per true one, which no operator wants to discover.
With fewer than `MIN_EACH` positives or negatives there is no suggestion: the report says how many more of
each it needs. Nothing here changes the configuration: the operator copies the number.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .banks import Bank
from .config import Config
from .decisions import latest
from .errors import ClipwatchError
from .pdq import distance
from .retro import turned
from .store import DecisionRecord
from .vocab import Decision, Status

MIN_EACH = 20
BINS = 20  # histogram bins between the lowest similarity seen and 1.0


@dataclass(frozen=True)
class Sample:
    score: float
    positive: bool


@dataclass(frozen=True)
class Point:
    threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class Report:
    key: str  # the configuration key it calibrates
    current: float
    target_precision: float
    positives: int
    negatives: int
    curve: tuple[Point, ...]
    histogram: tuple[tuple[float, float, int, int], ...]  # (from, to, positives, negatives)
    suggested: float | None
    lower: bool = False  # lower values are closer (PDQ distances): flagged at or below the threshold

    @property
    def needs(self) -> dict[str, int]:
        return {"positives": max(0, MIN_EACH - self.positives), "negatives": max(0, MIN_EACH - self.negatives)}

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "current": self.current, "target_precision": self.target_precision,
                "decisions": self.positives + self.negatives, "positives": self.positives,
                "negatives": self.negatives, "suggested_threshold": self.suggested, "needs": self.needs,
                "curve": [{"threshold": p.threshold, "precision": p.precision, "recall": p.recall} for p in self.curve],
                "histogram": [{"from": a, "to": b, "positives": p, "negatives": n} for a, b, p, n in self.histogram]}


    def as_text(self) -> list[str]:
        """The report as `clipwatch calibrate` prints it."""
        unit, fmt = ("distance", "{:.0f}") if self.lower else ("similarity", "{:.4f}")
        lines = [f"{self.positives} confirmed, {self.negatives} dismissed ({self.key} now {self.current})",
                 f"{unit:>17}  {'confirmed':>9}  {'dismissed':>9}"]
        lines += [f"{fmt.format(low)} - {fmt.format(high)}  {p:>9}  {n:>9}  {'#' * p}{'.' * n}"
                  for low, high, p, n in self.histogram]
        lines.append(f"{'threshold':>9}  {'precision':>9}  {'recall':>6}")
        lines += [f"{fmt.format(pt.threshold):>9}  {pt.precision:>9.4f}  {pt.recall:>6.4f}" for pt in self.curve]
        if self.suggested is None:
            lines.append(f"no suggestion yet: {self.needs['positives']} more confirmed and {self.needs['negatives']} "
                         f"more dismissed verdicts needed (at least {MIN_EACH} of each)")
        else:
            shown = int(self.suggested) if self.lower else self.suggested
            lines.append(f"suggested: {self.key} = {shown} (precision >= {self.target_precision} from there "
                         f"{'down' if self.lower else 'up'})")
        return lines


def from_decisions(decisions: Iterable[DecisionRecord], kind: Status, prompts: Sequence[str] = ()) -> list[Sample]:
    """The latest decision about each pair, as a sample (prohibited: image references only, not prompts,
    which have their own threshold)."""
    scored = [d for d in decisions if d.kind == kind and d.score is not None
              and not (kind == Status.PROHIBITED and d.other in prompts)]
    return [Sample(d.score, d.decision == Decision.CONFIRMED) for d in latest(scored).values() if d.score is not None]


def report_for(config: Config, decisions: Iterable[DecisionRecord], kind: Status,
               more: Sequence[Sample] = ()) -> Report:
    """The report for the threshold `kind` is judged by (duplicates.threshold or
    prohibited.image_threshold), from the decisions and `more` labelled samples."""
    key, current = (("duplicates.threshold", config.duplicates.threshold) if kind == Status.DUPLICATE
                    else ("prohibited.image_threshold", config.prohibited.image_threshold))
    samples = [*from_decisions(decisions, kind, config.prohibited.prompts), *more]
    return calibrate(samples, key, current, config.calibration.target_precision)


def pdq_report(config: Config, decisions: Iterable[DecisionRecord],
               hashes: Callable[[Sequence[str]], Mapping[str, bytes]]) -> Report:
    """The report for `duplicates.pdq_distance`: duplicate decisions whose two files both have a usable
    stored PDQ hash (`hashes`: sha256 -> hash, of stored rows), each as the hashes' distance."""
    counted = [d for d in latest(d for d in decisions if d.kind == Status.DUPLICATE).values()]
    known = hashes(sorted({s for d in counted for s in (d.sha256, d.other)}))
    samples = [Sample(float(distance(known[d.sha256], known[d.other])), d.decision == Decision.CONFIRMED)
               for d in counted if d.sha256 in known and d.other in known]
    return calibrate(samples, "duplicates.pdq_distance", config.duplicates.pdq_distance,
                     config.calibration.target_precision, lower=True)


def bank_report(config: Config, decisions: Iterable[DecisionRecord],
                hashes: Callable[[Sequence[str]], Mapping[str, bytes]], banks: Mapping[str, Bank]) -> Report:
    """The report for `prohibited.bank_distance`: decisions about hash-list matches (the label a bank of
    `banks`) whose file's PDQ hash is stored, each as the distance from that hash (and its rotations and flips,
    derived from the hash, where `prohibited.dihedral`) to the bank's nearest hash."""
    counted = [d for d in latest(d for d in decisions if d.kind == Status.PROHIBITED and d.other in banks).values()]
    known = hashes(sorted({d.sha256 for d in counted}))
    samples = []
    for d in counted:
        bank = banks[d.other]
        if d.sha256 in known and len(bank.pdq):
            import faiss

            code = np.frombuffer(known[d.sha256], np.uint8).reshape(1, -1)
            variants = turned(code)[0] if config.prohibited.dihedral else code
            bits, _ = faiss.knn_hamming(np.ascontiguousarray(variants), bank.pdq, 1)
            samples.append(Sample(float(bits.min()), d.decision == Decision.CONFIRMED))
    return calibrate(samples, "prohibited.bank_distance", config.prohibited.bank_distance,
                     config.calibration.target_precision, lower=True)


def read_pairs(path: str, similarity: Callable[[str, str], float]) -> list[Sample]:
    """`path_a,path_b,same` lines (same: 1/0, true/false, yes/no); a header line is allowed."""
    samples = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, line in enumerate(csv.reader(f), 1):
                if not line or (number == 1 and line[-1].strip().lower() == "same"):
                    continue
                if len(line) != 3 or line[2].strip().lower() not in TRUTH:
                    raise ClipwatchError(f"{path}:{number}: expected path_a,path_b,same (same: 1 or 0)")
                samples.append(Sample(similarity(line[0].strip(), line[1].strip()), TRUTH[line[2].strip().lower()]))
    except OSError as exc:
        raise ClipwatchError(f"--pairs {path}: {exc.strerror}") from None
    return samples


TRUTH = {"1": True, "true": True, "yes": True, "same": True, "0": False, "false": False, "no": False}


def calibrate(samples: Sequence[Sample], key: str, current: float, target: float, lower: bool = False) -> Report:
    """`lower`: the samples are distances, flagged at or below the threshold."""
    positives = sum(s.positive for s in samples)
    negatives = len(samples) - positives
    curve = tuple(_point(samples, t, positives, lower) for t in sorted({round(s.score, 4) for s in samples}))
    suggested = None
    if positives >= MIN_EACH and negatives >= MIN_EACH:
        for point in curve if not lower else reversed(curve):
            if all(p.precision >= target for p in curve
                   if (p.threshold >= point.threshold if not lower else p.threshold <= point.threshold)):
                suggested = point.threshold
                break
    histogram = _histogram(samples) if not lower else _bits_histogram(samples)
    return Report(key, current, target, positives, negatives, curve, histogram, suggested, lower)


def _point(samples: Sequence[Sample], threshold: float, positives: int, lower: bool = False) -> Point:
    flagged = [s for s in samples if (round(s.score, 4) <= threshold if lower else round(s.score, 4) >= threshold)]
    hits = sum(s.positive for s in flagged)
    return Point(threshold, round(hits / len(flagged), 4) if flagged else 1.0,
                 round(hits / positives, 4) if positives else 0.0)


def _bits_histogram(samples: Sequence[Sample]) -> tuple[tuple[float, float, int, int], ...]:
    """Distances in bins of 4 bits, from 0 to the largest seen."""
    if not samples:
        return ()
    bins = [[0, 0] for _ in range(int(max(s.score for s in samples)) // 4 + 1)]
    for s in samples:
        bins[int(s.score) // 4][0 if s.positive else 1] += 1
    return tuple((4.0 * i, 4.0 * i + 4, p, n) for i, (p, n) in enumerate(bins))


def _histogram(samples: Sequence[Sample]) -> tuple[tuple[float, float, int, int], ...]:
    if not samples:
        return ()
    low = min(min(s.score for s in samples), 0.999)
    width = (1.0 - low) / BINS
    bins = [[0, 0] for _ in range(BINS)]
    for s in samples:
        i = min(BINS - 1, max(0, int((s.score - low) / width)))
        bins[i][0 if s.positive else 1] += 1
    return tuple((round(low + i * width, 4), round(low + (i + 1) * width, 4), p, n) for i, (p, n) in enumerate(bins))
