"""Calibration from decisions: the curve, the suggestion and its rule, what it needs; the command on both
stores (with labelled pairs embedded by the model), and the page."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from clipwatch.calibration import MIN_EACH, Sample, calibrate, from_decisions
from clipwatch.config import Config
from clipwatch.store import DecisionRecord, RecordDecision, Store
from clipwatch.vocab import Decision, Status
from conftest import run_cli, write_image


def samples(confirmed: list[float], dismissed: list[float]) -> list[Sample]:
    return [Sample(s, True) for s in confirmed] + [Sample(s, False) for s in dismissed]


def test_the_suggestion_is_the_lowest_threshold_that_keeps_the_target_precision_above_it():
    confirmed = [0.95 + i * 0.002 for i in range(25)]  # 0.950 .. 0.998
    dismissed = [0.90 + i * 0.002 for i in range(24)] + [0.97]  # up to 0.946, and one false alarm at 0.97
    report = calibrate(samples(confirmed, dismissed), "duplicates.threshold", 0.97, target=0.93)
    by_threshold = {p.threshold: p for p in report.curve}
    assert by_threshold[0.95].recall == 1.0 and by_threshold[0.95].precision == round(25 / 26, 4)
    assert by_threshold[0.97].precision == round(15 / 16, 4)  # the false alarm weighs more among fewer
    assert report.suggested == 0.95  # 0.9615 here, never below 0.93 above
    dip = calibrate(samples(confirmed, dismissed), "duplicates.threshold", 0.97, target=0.95)
    assert dip.suggested == 0.972  # 0.95 reaches 0.9615, but 0.97 dips to 0.9375: the first above the dip
    strict = calibrate(samples(confirmed, dismissed), "duplicates.threshold", 0.97, target=0.99)
    assert strict.suggested == 0.972 and {p.precision for p in strict.curve if p.threshold >= 0.972} == {1.0}
    assert sum(p + n for _, _, p, n in report.histogram) == 50


def test_too_few_decisions_give_no_suggestion_and_say_how_many_more():
    report = calibrate(samples([0.99] * 5, [0.8] * (MIN_EACH + 3)), "duplicates.threshold", 0.97, 0.99)
    assert report.suggested is None and report.needs == {"positives": MIN_EACH - 5, "negatives": 0}
    assert report.as_json()["suggested_threshold"] is None and report.as_json()["decisions"] == 5 + MIN_EACH + 3


def test_only_the_latest_decision_about_a_pair_counts_and_prompts_are_left_out():
    def d(kind: Status, sha: str, other: str, decision: Decision, score: float) -> DecisionRecord:
        return DecisionRecord(kind, sha, other, decision, "t", score)

    decisions = [d(Status.DUPLICATE, "a", "b", Decision.DISMISSED, 0.98),
                 d(Status.DUPLICATE, "b", "a", Decision.CONFIRMED, 0.98),  # the same pair, later: confirmed
                 d(Status.PROHIBITED, "c", "weapons", Decision.CONFIRMED, 0.93),
                 d(Status.PROHIBITED, "c", "a photo of a gun", Decision.DISMISSED, 0.31)]
    assert from_decisions(decisions, Status.DUPLICATE) == [Sample(0.98, True)]
    assert from_decisions(decisions, Status.PROHIBITED, prompts=("a photo of a gun",)) == [Sample(0.93, True)]


def seed(store: Store, confirmed: int, dismissed: int) -> None:
    ops = [RecordDecision(DecisionRecord(Status.DUPLICATE, f"{i:064x}", f"{i + 1000:064x}", Decision.CONFIRMED, "t",
                                         0.96 + (i % 40) / 1000)) for i in range(confirmed)]
    ops += [RecordDecision(DecisionRecord(Status.DUPLICATE, f"{i + 5000:064x}", f"{i + 9000:064x}",
                                          Decision.DISMISSED, "t", 0.90 + (i % 50) / 1000)) for i in range(dismissed)]
    store.apply(ops)


def test_calibrate_reads_the_decisions_of_the_store_and_labelled_pairs(
        store_url: str, make_config: Callable[..., Config], open_test_store: Callable[..., Store], table: str,
        model_dir: Path, tmp_path: Path):
    store = open_test_store(store_url)
    env = {"CLIPWATCH_STORE__URL": store_url, "CLIPWATCH_STORE__TABLE": table, "CLIPWATCH_MODEL__NAME": str(model_dir),
           "CLIPWATCH_MODEL__DEVICE": "cpu"}
    seed(store, confirmed=3, dismissed=30)
    done = run_cli("calibrate", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["decisions"], report["positives"], report["negatives"]) == (33, 3, 30)
    assert report["suggested_threshold"] is None and report["needs"] == {"positives": MIN_EACH - 3, "negatives": 0}
    assert all(set(p) == {"threshold", "precision", "recall"} for p in report["curve"])
    text = run_cli("calibrate", env=env)
    assert "no suggestion yet: 17 more confirmed" in text.stdout
    a = write_image(tmp_path / "a.jpg", seed=1)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("path_a,path_b,same\n" + "".join(f"{a},{a},1\n" for _ in range(MIN_EACH)))
    with_pairs = json.loads(run_cli("calibrate", "--json", "--pairs", str(pairs), env=env).stdout)
    assert with_pairs["positives"] == 3 + MIN_EACH
    assert with_pairs["suggested_threshold"] is not None and with_pairs["suggested_threshold"] > 0.949
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{a},{a},maybe\n")
    wrong = run_cli("calibrate", "--pairs", str(bad), env=env)
    assert wrong.returncode == 1 and "bad.csv:1: expected path_a,path_b,same" in wrong.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_calibrate_for_prohibited_uses_its_own_decisions(store_url: str, open_test_store: Callable[..., Store],
                                                         table: str):
    store = open_test_store(store_url)
    seed(store, confirmed=25, dismissed=25)
    env = {"CLIPWATCH_STORE__URL": store_url, "CLIPWATCH_STORE__TABLE": table}
    report = json.loads(run_cli("calibrate", "--for", "prohibited", "--json", env=env).stdout)
    assert report["key"] == "prohibited.image_threshold" and report["decisions"] == 0


def test_for_pdq_distances_the_suggestion_is_the_highest_distance_that_keeps_the_target_precision():
    confirmed = [float(d) for d in range(0, 25)]  # copies: 0 .. 24 bits apart
    dismissed = [float(d) for d in range(40, 64)] + [20.0]  # look-alikes far apart, and one close false alarm
    report = calibrate(samples(confirmed, dismissed), "duplicates.pdq_distance", 31, target=0.95, lower=True)
    by_threshold = {p.threshold: p for p in report.curve}
    assert by_threshold[24.0].recall == 1.0 and by_threshold[24.0].precision == round(25 / 26, 4)
    assert by_threshold[19.0].precision == 1.0 and by_threshold[19.0].recall == round(20 / 25, 4)
    assert report.suggested == 24.0  # up to 24 bits: 0.9615; the false alarm at 20 costs no more than that
    strict = calibrate(samples(confirmed, dismissed), "duplicates.pdq_distance", 31, target=0.99, lower=True)
    assert strict.suggested == 19.0  # below the false alarm
    assert sum(p + n for _, _, p, n in report.histogram) == 50
    assert "suggested: duplicates.pdq_distance = 24 (precision >= 0.95 from there down)" in report.as_text()
