"""Hash lists: banks of PDQ, MD5 and SHA-256 hashes, matched at ingest and against what is already stored.

Real stores (SQLite, MySQL 9, MariaDB 11.8), the real tiny model, and real photographs (scripts/photos.py):
a bank is made from some of them, and their edited copies (re-encoded, resized, rotated, mirrored,
watermarked) must be found by it; the other photos, among them different shots of the same scenes, never.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import Image, ImageDraw, ImageFont

from clipwatch import pdq, retro
from clipwatch.answers import Answers
from clipwatch.banks import Banks, read_bank
from clipwatch.imaging import decode_image
from clipwatch.mih import MultiIndex
from clipwatch.retro import BankKeeper, Snapshots, turned
from clipwatch.store import SetVerdict, open_store
from clipwatch.web.users import set_user
from conftest import Client, Daemon, Harness, all_verdicts, run_cli, scrape

LISTED = ("skagen.jpg", "bar55.jpg")  # the photos a bank is made of
OTHERS = ("skagen_2.jpg", "bar55_2.jpg", "snow.jpg", "pool.jpg")  # never matched: two are the same scenes
ANA = ("ana", "correct horse")


def hashes_of(path: Path) -> pdq.FileHashes:
    """The file's hashes as the daemon computes them."""
    import hashlib

    data = path.read_bytes()
    return pdq.hashes_of(decode_image(data, 64_000_000, draft=pdq.DRAFT_SIDE), hashlib.md5(data).hexdigest())


def write_bank(directory: Path, name: str, photos: list[Path], extra: str = "") -> Path:
    """A bank file of the photos' PDQ hashes, written atomically as an operator should (rename over)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"pdq {hashes_of(p).pdq_hex}" for p in photos]
    tmp = directory / f".{name}.txt.tmp"
    tmp.write_text("# a test bank\n" + "\n".join(lines) + "\n" + extra)
    os.replace(tmp, directory / f"{name}.txt")
    return directory / f"{name}.txt"


def edited(src: Path, dest_dir: Path) -> dict[str, Path]:
    """The edits a re-upload of a listed image goes through, each a new file of new bytes."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("RGB")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))  # a semi-transparent mark, as sites stamp reposts
    ImageDraw.Draw(overlay).text((img.width // 3, img.height - 70), "reposted.example", fill=(255, 255, 255, 110),
                                 font=ImageFont.load_default(size=40))
    marked = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    versions = {"reencoded": (img, 45), "resized": (img.resize((img.width // 2, img.height // 2)), 85),
                "rotated": (img.transpose(Image.Transpose.ROTATE_90), 90),
                "mirrored": (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90), "watermarked": (marked, 90)}
    out = {}
    for name, (image, quality) in versions.items():
        out[name] = dest_dir / f"{src.stem}-{name}.jpg"
        image.save(out[name], format="JPEG", quality=quality)
    return out


def copies_and_others(photos: Path, root: Path) -> tuple[dict[str, Path], list[Path]]:
    copies = {f"{src}-{kind}": path for src in LISTED for kind, path in edited(photos / src, root / "copies").items()}
    others = []
    for name in OTHERS:
        others.append(root / "others" / name)
        others[-1].parent.mkdir(parents=True, exist_ok=True)
        others[-1].write_bytes((photos / name).read_bytes())
    return copies, others


def rows_by_path(h: Harness) -> dict[str, object]:
    ids = [v.id for v in all_verdicts(h.store).values()]
    return {r.path: r for r in h.store.rows_by_id(ids).values()}


def test_edited_copies_of_listed_photos_are_prohibited_at_ingest(make_harness, photos: Path, tmp_path: Path):
    bank = write_bank(tmp_path / "banks", "ncmec-test", [photos / n for n in LISTED])
    h = make_harness(prohibited__bank_dir=bank.parent, prohibited__action="flag")
    copies, others = copies_and_others(photos, h.root)
    h.upsert(*copies.values(), *others)
    rows = rows_by_path(h)
    for name, path in copies.items():
        row = rows[str(path)]
        assert (row.status, row.label, row.signal) == ("prohibited", "ncmec-test", "pdq"), name
        assert row.pdq_distance is not None and row.pdq_distance <= 31, name
    for path in others:
        assert rows[str(path)].status == "ok", path.name
    samples = h.metrics.registry.get_sample_value
    assert samples("clipwatch_bank_matches_total", {"bank": "ncmec-test", "signal": "pdq"}) == len(copies)
    assert samples("clipwatch_bank_hashes", {"bank": "ncmec-test", "signal": "pdq"}) == len(LISTED)
    assert samples("clipwatch_verdicts_total", {"kind": "prohibited", "action": "flag", "signal": "pdq"}) == len(copies)


def test_without_dihedral_matching_rotated_and_mirrored_copies_pass(make_harness, photos: Path, tmp_path: Path):
    bank = write_bank(tmp_path / "banks", "list", [photos / "skagen.jpg"])
    h = make_harness(prohibited__bank_dir=bank.parent, prohibited__dihedral="false", prohibited__action="flag",
                     duplicates__enabled="false")  # the copies are copies of each other too: not this test's subject
    copies = edited(photos / "skagen.jpg", h.root)
    h.upsert(*copies.values())
    rows = rows_by_path(h)
    assert {k: rows[str(p)].status for k, p in copies.items()} == {
        "reencoded": "prohibited", "resized": "prohibited", "watermarked": "prohibited", "rotated": "ok",
        "mirrored": "ok"}


def test_md5_and_sha256_lines_match_the_exact_bytes_and_the_action_per_signal(make_harness, photos: Path,
                                                                                tmp_path: Path):
    import hashlib

    a, b = (photos / "pool.jpg").read_bytes(), (photos / "snow.jpg").read_bytes()
    banks = tmp_path / "banks"
    banks.mkdir()
    (banks / "exact.txt").write_text(f"md5 {hashlib.md5(a).hexdigest()}\n")
    (banks / "bytes.sha256.txt").write_text(f"{hashlib.sha256(b).hexdigest()}\n")  # bare: SHA-256 by the name
    h = make_harness(prohibited__bank_dir=banks, prohibited__actions='{md5 = "quarantine", sha256 = "flag"}')
    (h.root / "a.jpg").write_bytes(a)
    (h.root / "b.jpg").write_bytes(b)
    h.upsert(h.root / "a.jpg", h.root / "b.jpg")
    rows = rows_by_path(h)
    moved = next(r for p, r in rows.items() if p.endswith("a.jpg"))
    assert (moved.status, moved.label, moved.signal, moved.pdq_distance) == ("prohibited", "exact", "md5", 0)
    assert not (h.root / "a.jpg").exists() and Path(moved.path).is_file()  # quarantined: its row followed it
    flagged = rows[str(h.root / "b.jpg")]
    assert (flagged.status, flagged.label, flagged.signal) == ("prohibited", "bytes.sha256", "sha256")
    assert (h.root / "b.jpg").exists()


def test_behind_a_publish_gate_a_listed_image_is_never_published(make_harness, photos: Path, tmp_path: Path):
    bank = write_bank(tmp_path / "banks", "list", [photos / "skagen.jpg"])
    public = tmp_path / "public"
    public.mkdir()
    h = make_harness(prohibited__bank_dir=bank.parent, prohibited__action="flag", watch__publish_dir=public)
    copy = edited(photos / "skagen.jpg", h.root)["resized"]
    other = h.root / "snow.jpg"
    other.write_bytes((photos / "snow.jpg").read_bytes())
    h.upsert(copy, other)
    assert (public / "snow.jpg").is_file()  # the other passed
    assert not list(public.rglob("skagen*")) and not copy.exists()  # flag would publish: quarantined instead
    row = next(r for r in rows_by_path(h).values() if "skagen" in r.path)
    assert (row.status, row.label) == ("prohibited", "list")


def test_a_dismissed_bank_match_stays_dismissed_for_those_bytes(make_harness, photos: Path, tmp_path: Path, cli):
    bank = write_bank(tmp_path / "banks", "list", [photos / "bar55.jpg"])
    h = make_harness(prohibited__bank_dir=bank.parent, prohibited__action="flag")
    copy = edited(photos / "bar55.jpg", h.root)["mirrored"]
    h.upsert(copy)
    row = rows_by_path(h)[str(copy)]
    assert row.status == "prohibited"
    assert cli("dismiss", str(row.id))[0] == 0
    again = h.root / "again.jpg"
    again.write_bytes(copy.read_bytes())
    h.service.decisions.refresh(h.store)
    h.upsert(again)
    row = rows_by_path(h)[str(again)]
    assert (row.status, row.signal) == ("duplicate", "sha256")  # a copy, but that bank is skipped for these bytes


def keeper(h: Harness) -> BankKeeper:
    """The daemon's banks thread, driven round by round."""
    return BankKeeper(h.service.banks, Snapshots(h.config.data_dir / "banks"), lambda: open_store(h.config),
                      h.service.decisions, 1.0, h.metrics)


def test_stored_rows_are_checked_against_what_a_bank_gains(make_harness, photos: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(retro, "MULTI_INDEX_FROM", 1)  # the multi-index even for these few rows (the others: brute)
    banks = tmp_path / "banks"
    write_bank(banks, "list", [photos / "bar55.jpg"])
    h = make_harness(prohibited__bank_dir=banks)
    copies, others = copies_and_others(photos, h.root)
    h.upsert(*copies.values(), *others)
    rows = rows_by_path(h)
    assert "prohibited" not in {rows[str(p)].status for k, p in copies.items() if k.startswith("skagen")}
    quarantined = [r for path, r in rows.items() if "/bar55-" in path]  # at ingest, with the default action
    assert [r.status for r in quarantined] == ["prohibited"] * 5 and all(str(h.root) not in r.path for r in quarantined)

    k = keeper(h)
    k.round()  # the first round: the bank as loaded, checked against every stored row
    assert "prohibited" not in {r.status for r in rows_by_path(h).values() if "skagen" in r.path}
    write_bank(banks, "list", [photos / "bar55.jpg", photos / "skagen.jpg"])  # the list gains a hash
    k.round()
    after = rows_by_path(h)
    for kind in ("reencoded", "resized", "rotated", "mirrored", "watermarked"):
        row = after[str(copies[f"skagen.jpg-{kind}"])]
        assert (row.status, row.label, row.signal) == ("prohibited", "list", "pdq"), kind
        assert row.pdq_distance is not None and row.pdq_distance <= 31, kind
        assert Path(row.path).is_file() and str(h.root) in row.path  # not moved: a person decides
    for path in others:
        assert after[str(path)].status == "ok", path.name
    samples = h.metrics.registry.get_sample_value
    assert samples("clipwatch_bank_matches_total", {"bank": "list", "signal": "pdq"}) == 10


def test_a_bank_changed_while_the_daemon_was_down_is_checked_at_the_next_start(make_harness, photos: Path,
                                                                               tmp_path: Path):
    banks = tmp_path / "banks"
    write_bank(banks, "list", [photos / "bar55.jpg"])
    h = make_harness(prohibited__bank_dir=banks)
    copy = edited(photos / "skagen.jpg", h.root)["resized"]
    h.upsert(copy)
    keeper(h).round()
    h.service.close()
    assert Snapshots(h.config.data_dir / "banks").load("list") is not None
    write_bank(banks, "list", [photos / "bar55.jpg", photos / "skagen.jpg"])  # while no daemon runs
    again = make_harness(prohibited__bank_dir=banks)
    k = keeper(again)
    k.round()
    row = rows_by_path(again)[str(copy)]
    assert (row.status, row.label) == ("prohibited", "list")
    again.store.apply([SetVerdict(row.id)])  # cleared
    k.round()  # nothing new in the bank: the row is not checked again
    assert rows_by_path(again)[str(copy)].status == "ok"


def test_a_dismissed_row_is_not_marked_again_by_the_pass(make_harness, photos: Path, tmp_path: Path, cli):
    banks = tmp_path / "banks"
    h = make_harness(prohibited__bank_dir=banks)
    copy = edited(photos / "skagen.jpg", h.root)["watermarked"]
    h.upsert(copy)
    write_bank(banks, "list", [photos / "skagen.jpg"])
    keeper(h).round()
    row = rows_by_path(h)[str(copy)]
    assert row.status == "prohibited"
    assert cli("dismiss", str(row.id))[0] == 0
    Snapshots(h.config.data_dir / "banks").path("list").unlink()  # as if the list were new again
    keeper(h).round()
    assert rows_by_path(h)[str(copy)].status == "ok"


def test_malformed_lines_are_skipped_counted_and_named(tmp_path: Path, photos: Path):
    good = hashes_of(photos / "skagen.jpg")
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"# header\n\n"
                     + f"pdq {good.pdq_hex}\n".encode()
                     + b"pdq 12345\n"  # too short
                     + b"photodna abc\n"  # unknown type
                     + f"md5 {'zz' * 16}\n".encode()  # not hex
                     + f"{good.md5}  # a bare MD5 with a comment\n".encode()
                     + b"\xff\xfe binary junk\n"
                     + f"PDQ {good.pdq_hex.upper()}\n".encode())  # case does not matter
    from clipwatch.metrics import Metrics

    metrics = Metrics()
    banks = Banks(str(tmp_path), 31, True, 50, metrics)
    with structlog.testing.capture_logs() as logged:
        banks.refresh()
    bank = banks.banks()[0]
    assert (len(bank.pdq), len(bank.md5), bank.rejected) == (2, 1, 4)
    assert metrics.registry.get_sample_value("clipwatch_bank_lines_rejected_total", {"bank": "mixed"}) == 4
    rejected = [(e["line"], e["path"]) for e in logged if e["event"] == "bank_line_rejected"]
    assert rejected == [(n, str(path)) for n in (4, 5, 6, 8)]


def test_an_unreadable_bank_keeps_its_previous_contents(tmp_path: Path, photos: Path):
    from clipwatch.metrics import Metrics

    bank = write_bank(tmp_path / "banks", "list", [photos / "skagen.jpg"])
    metrics = Metrics()
    banks = Banks(str(bank.parent), 31, True, 50, metrics)
    banks.refresh()
    copy = hashes_of(edited(photos / "skagen.jpg", tmp_path / "c")["resized"])
    assert banks.match_many([("00" * 32, copy)])[0] is not None
    bank.unlink()
    bank.symlink_to(tmp_path / "gone" / "list.txt")  # the list on a mount that went away
    assert banks.refresh() == []
    (kept,) = banks.banks()
    assert kept.problem.startswith("cannot read it") and len(kept.pdq) == 1
    assert banks.match_many([("00" * 32, copy)])[0] is not None
    assert metrics.registry.get_sample_value("clipwatch_bank_load_failures_total", {"bank": "list"}) == 1


def test_rotations_derived_from_a_stored_hash_are_close_to_the_exact_ones(photos: Path):
    """The pass over stored rows has no image, only the hash: its eight rotations and flips are derived from the
    hash's bits. They must stay close to the exact variants the image's own DCT gives (ingest's)."""
    worst = []
    for path in sorted(photos.glob("*.jpg")):
        h = hashes_of(path)
        if (h.pdq_quality or 0) < 50:
            continue
        derived = turned(np.frombuffer(h.pdq, np.uint8).reshape(1, -1))[0]  # type: ignore[arg-type]
        for exact in h.dihedral:
            worst.append(min(pdq.distance(exact, d.tobytes()) for d in derived))
    assert len(worst) >= 8 * 10
    assert max(worst) <= 20 and sum(worst) / len(worst) <= 7  # measured: 18 at most, 5 on average


def test_the_multi_index_finds_exactly_the_pairs_brute_force_finds():
    import faiss

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (20_000, 32), np.uint8)
    near = codes[rng.integers(0, len(codes), 600)].copy()
    for n, flips in enumerate(rng.integers(0, 56, len(near))):  # copies 0..55 bits away, around every radius
        bits = rng.choice(256, flips, replace=False)
        np.bitwise_xor.at(near[n], bits // 8, (1 << (7 - bits % 8)).astype(np.uint8))
    queries = np.concatenate([near, rng.integers(0, 256, (400, 32), np.uint8)])
    index, flat = MultiIndex(codes), faiss.IndexBinaryFlat(256)
    flat.add(codes)
    for radius in (0, 5, 12, 31, 47):
        limits, distances, ids = flat.range_search(queries, radius + 1)
        expected = set(zip(np.repeat(np.arange(len(queries)), np.diff(limits).astype(np.int64)).tolist(),
                           ids.tolist(), distances.tolist(), strict=True))
        q, i, d = index.within(queries, radius)
        assert set(zip(q.tolist(), i.tolist(), d.tolist(), strict=True)) == expected, radius
        assert len(q) == len(expected)  # each pair once
        assert radius < 31 or len(expected) > 100  # the test has pairs to find
    with pytest.raises(ValueError, match="0..47"):
        index.within(queries, 48)


def test_check_answers_a_bank_match(make_harness, photos: Path, tmp_path: Path):
    bank = write_bank(tmp_path / "banks", "list", [photos / "skagen.jpg"])
    h = make_harness(prohibited__bank_dir=bank.parent)
    s = h.service
    answers = Answers(h.config, h.embedder, s.index, h.store, threading.Lock(), s.references, s.decisions, s.copies)
    answer = answers.check(edited(photos / "skagen.jpg", tmp_path / "c")["rotated"].read_bytes())
    assert (answer["status"], answer["label"], answer["signal"], answer["action"]) == (
        "prohibited", "list", "pdq", "quarantine")
    assert answer["pdq_distance"] <= 31
    assert answers.check((photos / "skagen_2.jpg").read_bytes())["status"] == "ok"


def test_the_review_page_names_the_bank_and_the_distance(make_harness, photos: Path, tmp_path: Path):
    set_user(str(tmp_path / "users"), *ANA)
    bank = write_bank(tmp_path / "banks", "gifct-test", [photos / "bar55.jpg"])
    h = make_harness(metrics__listen="127.0.0.1:0", http__users_file=str(tmp_path / "users"),
                     prohibited__bank_dir=bank.parent, prohibited__action="flag")
    assert h.service._http is not None
    copy = edited(photos / "bar55.jpg", h.root)["resized"]
    h.upsert(copy)
    bits = rows_by_path(h)[str(copy)].pdq_distance
    status, _, page = Client(h.service._http.port, h.metrics).request("GET", "/", auth=ANA,
                                                                      headers={"Accept": "text/html"})
    text = page.decode()
    assert status == 200 and "hash list “gifct-test”" in text and f"nearest listed hash {bits} bits away" in text
    assert 'class="signal pdq"' in text and "Not prohibited" in text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_bank_add_list_and_check(cli, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    banks = tmp_path / "banks"
    monkeypatch.setenv("CLIPWATCH_PROHIBITED__BANK_DIR", str(banks))
    code, out, _ = cli("bank", "add", "mine", str(photos / "skagen.jpg"), str(photos / "bar55.jpg"))
    assert code == 0 and "4 line(s) added" in out
    bank = read_bank(banks / "mine.txt")
    assert (len(bank.pdq), len(bank.md5)) == (2, 2)
    assert cli("bank", "add", "mine", str(photos / "skagen.jpg"))[0] == 0  # nothing repeated
    assert len(read_bank(banks / "mine.txt")) == 4
    code, _, err = cli("bank", "add", "mine", str(tmp_path / "missing.jpg"))
    assert code == 1 and "missing.jpg" in err
    assert cli("bank", "add", "../escape", str(photos / "snow.jpg"))[0] == 2

    (banks / "broken.txt").write_text("pdq nothex\n")
    code, out, _ = cli("bank", "list", "--json")
    listed = {b["bank"]: b for b in map(json.loads, out.splitlines())}
    assert code == 1  # a bank with a problem
    assert (listed["mine"]["pdq"], listed["mine"]["md5"], listed["mine"]["problems"]) == (2, 2, [])
    assert listed["broken"]["rejected_lines"] == 1 and "line 1" in listed["broken"]["problems"][0]
    (banks / "broken.txt").unlink()

    rotated = edited(photos / "skagen.jpg", tmp_path / "c")["rotated"]
    code, out, _ = cli("bank", "check", "--json", str(rotated), str(photos / "skagen_2.jpg"))
    first, second = map(json.loads, out.splitlines())
    assert code == 3  # a file matched
    assert [(m["bank"], m["signal"]) for m in first["matches"]] == [("mine", "pdq")]
    assert first["matches"][0]["distance"] <= 31 and second["matches"] == []
    code, out, _ = cli("bank", "check", str(photos / "snow.jpg"))
    assert code == 0 and "no bank matches" in out


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_calibrate_for_bank_measures_the_decided_matches(make_harness, photos: Path, tmp_path: Path, cli,
                                                         monkeypatch: pytest.MonkeyPatch):
    bank = write_bank(tmp_path / "banks", "list", [photos / "skagen.jpg", photos / "bar55.jpg"])
    monkeypatch.setenv("CLIPWATCH_PROHIBITED__BANK_DIR", str(bank.parent))
    h = make_harness(prohibited__bank_dir=bank.parent, prohibited__action="flag")
    a = edited(photos / "skagen.jpg", h.root)["resized"]
    b = edited(photos / "bar55.jpg", h.root)["watermarked"]
    h.upsert(a, b)
    rows = rows_by_path(h)
    assert cli("confirm", str(rows[str(a)].id))[0] == 0
    assert cli("dismiss", str(rows[str(b)].id))[0] == 0
    code, out, _ = cli("calibrate", "--for", "bank", "--json")
    report = json.loads(out)
    assert code == 0 and (report["key"], report["current"]) == ("prohibited.bank_distance", 31)
    assert (report["positives"], report["negatives"]) == (1, 1)
    assert {p["threshold"] for p in report["curve"]} == {rows[str(a)].pdq_distance, rows[str(b)].pdq_distance}


def test_a_bank_replaced_while_uploads_arrive(daemon_env: dict[str, str], photos: Path, tmp_path: Path,
                                             store_url: str, make_config: Callable[..., object]):
    """The running daemon: uploads keep arriving while the bank file is replaced (rename over); none is lost or
    judged with half a bank, the new hashes apply to the next uploads, and what was stored before is checked."""
    banks = tmp_path / "banks"
    write_bank(banks, "list", [photos / "bar55.jpg"])
    watched = Path(daemon_env["CLIPWATCH_WATCH__PATHS"])
    watched.mkdir(parents=True, exist_ok=True)
    early = edited(photos / "skagen.jpg", tmp_path / "early")["resized"]
    (watched / "early.jpg").write_bytes(early.read_bytes())
    daemon = Daemon({**daemon_env, "CLIPWATCH_PROHIBITED__BANK_DIR": str(banks),
                     "CLIPWATCH_PROHIBITED__REFRESH_INTERVAL_S": "0.2", "CLIPWATCH_PROHIBITED__ACTION": "flag",
                     "CLIPWATCH_WATCH__SETTLE_MS": "100"})
    config = make_config(store_url)
    store = open_store(config)  # type: ignore[arg-type]
    try:
        wait_for(lambda: daemon.saw("running"), "the daemon to run")
        wait_for(lambda: len(all_verdicts(store)) == 1, "the early upload's row")
        others = [p for p in sorted(photos.glob("*.jpg")) if not p.name.startswith(("skagen", "bar55"))][:8]
        for n, other in enumerate(others):
            (watched / f"other-{n}.jpg").write_bytes(other.read_bytes())
            if n == 3:
                write_bank(banks, "list", [photos / "bar55.jpg", photos / "skagen.jpg"])
        wait_for(lambda: len(all_verdicts(store)) == 1 + len(others), "every upload's row")
        wait_for(lambda: all_verdicts(store)[str(watched / "early.jpg")].status == "prohibited",
                 "the stored early upload marked by the pass over stored rows")
        late = edited(photos / "skagen.jpg", tmp_path / "late")["mirrored"]
        (watched / "late.jpg").write_bytes(late.read_bytes())
        wait_for(lambda: str(watched / "late.jpg") in all_verdicts(store), "the late upload's row")
        verdicts = all_verdicts(store)
        assert verdicts[str(watched / "late.jpg")].status == "prohibited"
        assert {verdicts[str(watched / f"other-{n}.jpg")].status for n in range(len(others))} == {"ok"}
        assert (watched / "early.jpg").exists()  # marked, not moved
        metrics = scrape(daemon)
        assert metrics['clipwatch_bank_hashes{bank="list",signal="pdq"}'] == 2
        assert metrics['clipwatch_bank_matches_total{bank="list",signal="pdq"}'] == 2
        assert any(e.get("event") == "bank_match_stored" for e in daemon.events)
    finally:
        store.close()
        assert daemon.stop() == 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_cli_runs_as_a_subprocess(tmp_path: Path, photos: Path):
    """`clipwatch bank check` as a user runs it: its own interpreter, the exit code documented."""
    bank = write_bank(tmp_path / "banks", "list", [photos / "snow.jpg"])
    done = run_cli("bank", "check", str(photos / "snow.jpg"),
                   env={"CLIPWATCH_PROHIBITED__BANK_DIR": str(bank.parent),
                        "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 3 and "list (pdq, 0 bits)" in done.stdout
