"""Thresholds learnt from decisions: precision and recall at each threshold, and the one to use.

A confirmed verdict is a positive (the pair was a duplicate, the image was prohibited), a dismissed one
a negative, each with the similarity the daemon measured; labelled pairs from a CSV file
(`path_a,path_b,same`) add more, measured with the model. For a threshold t, the verdicts at or above t
are the ones the daemon would make: precision = positives among them / all of them, recall = positives
among them / all positives.

The suggested threshold is the lowest t at which precision reaches `calibration.target_precision` and
stays there for every higher threshold (a dip above it would mean a stricter setting flags more false
alarms per true one, which no operator wants to discover later). With fewer than `MIN_EACH` positives or
negatives there is no suggestion: the report says how many more of each it needs. Nothing here changes
the configuration: the operator copies the number.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config
from .decisions import latest
from .errors import ClipwatchError
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

    @property
    def needs(self) -> dict[str, int]:
        return {"positives": max(0, MIN_EACH - self.positives), "negatives": max(0, MIN_EACH - self.negatives)}

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "current": self.current, "target_precision": self.target_precision,
                "decisions": self.positives + self.negatives, "positives": self.positives,
                "negatives": self.negatives, "suggested_threshold": self.suggested, "needs": self.needs,
                "curve": [{"threshold": p.threshold, "precision": p.precision, "recall": p.recall} for p in self.curve],
                "histogram": [{"from": a, "to": b, "positives": p, "negatives": n} for a, b, p, n in self.histogram]}


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


def calibrate(samples: Sequence[Sample], key: str, current: float, target: float) -> Report:
    positives = sum(s.positive for s in samples)
    negatives = len(samples) - positives
    curve = tuple(_point(samples, t, positives) for t in sorted({round(s.score, 4) for s in samples}))
    suggested = None
    if positives >= MIN_EACH and negatives >= MIN_EACH:
        for point in curve:
            if all(p.precision >= target for p in curve if p.threshold >= point.threshold):
                suggested = point.threshold
                break
    return Report(key, current, target, positives, negatives, curve, _histogram(samples), suggested)


def _point(samples: Sequence[Sample], threshold: float, positives: int) -> Point:
    flagged = [s for s in samples if round(s.score, 4) >= threshold]
    hits = sum(s.positive for s in flagged)
    return Point(threshold, round(hits / len(flagged), 4) if flagged else 1.0,
                 round(hits / positives, 4) if positives else 0.0)


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
