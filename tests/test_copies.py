"""Copies told apart from look-alikes: imports without bytes, PDQ beside every vector, verdicts by signal.

Real stores (SQLite, MySQL 9, MariaDB 11.8), the real tiny model, real photographs from the corpus that
scripts/photos installs (tests/photos.py) where a test is about what a picture looks like.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageOps

from clipwatch import pdq
from clipwatch.answers import Answers
from clipwatch.changes import Change
from clipwatch.dbindex import DatabaseIndex
from clipwatch.importer import import_file
from clipwatch.pdqindex import PerceptualIndex
from clipwatch.store import open_store
from clipwatch.sync import IndexSync
from clipwatch.vocab import ChangeKind
from clipwatch.web.users import set_user
from conftest import Client, Harness, all_verdicts

# The seed notebook's real CLIP ViT-B/32 similarities: two different dogs, a dog and a cat, a dog and a street.
SEED_COSINES = {("dog1", "dog2"): 0.9646, ("dog1", "cat"): 0.7443, ("dog2", "cat"): 0.7401,
                ("dog1", "street"): 0.4495, ("dog2", "street"): 0.4512, ("cat", "street"): 0.4620}
SEED_NAMES = ("dog1", "dog2", "cat", "street")
ANA = ("ana", "correct horse")
HTML = {"Accept": "text/html"}


def seed_vectors(dimension: int = 512) -> dict[str, np.ndarray]:
    """Four unit vectors with exactly the seed notebook's pairwise cosines (a Gram matrix's Cholesky factor,
    turned by a random rotation into `dimension` dimensions)."""
    gram = np.eye(4)
    for (a, b), cosine in SEED_COSINES.items():
        i, j = SEED_NAMES.index(a), SEED_NAMES.index(b)
        gram[i, j] = gram[j, i] = cosine
    factor = np.linalg.cholesky(gram)  # rows: the four vectors in 4 dimensions
    rotation, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((dimension, dimension)))
    vectors = factor @ rotation[:4]
    return {name: v / np.linalg.norm(v) for name, v in zip(SEED_NAMES, vectors, strict=True)}


def import_lines(h: Harness, lines: list[dict[str, object]]) -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines)
    import_file(h.service, io.StringIO(text))


def test_imported_vectors_without_bytes_are_never_exact_copies_of_each_other(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    vectors = seed_vectors()
    import_lines(h, [{"path": f"/elsewhere/{name}.jpg", "embedding": v.tolist()} for name, v in vectors.items()])
    rows = all_verdicts(h.store)
    assert {path: v.status for path, v in rows.items()} == {f"/elsewhere/{n}.jpg": "ok" for n in SEED_NAMES}
    shas = h.store.shas_of([v.id for v in rows.values()])
    assert len(set(shas.values())) == 4  # each row its own key: decisions about one never touch another

    import_lines(h, [{"path": "/elsewhere/dog1 again.jpg", "embedding": vectors["dog1"].tolist()}])
    again = all_verdicts(h.store)["/elsewhere/dog1 again.jpg"]
    assert again.status == "duplicate" and again.match_id == rows["/elsewhere/dog1.jpg"].id
    assert again.score is not None and again.score > 0.999
    assert signal_of(h, again.id) == "clip"  # by cosine, never as the same bytes


def signal_of(h: Harness, row_id: int) -> str | None:
    return h.store.rows_by_id([row_id])[row_id].signal


# --- what a copy is: real photographs, edited -----------------------------------------------------------------


def resized_copy(src: Path, dest: Path, scale: float = 0.5, quality: int = 70, gray: bool = False) -> Path:
    """The photo as a re-upload often is: smaller, recompressed, perhaps grayscale. New bytes."""
    img = Image.open(src).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    if gray:
        img = ImageOps.grayscale(img).convert("RGB")
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest, format="JPEG", quality=quality)
    return dest


def place(photos: Path, h: Harness, name: str, as_name: str | None = None) -> Path:
    dest = h.root / (as_name or name)
    dest.write_bytes((photos / name).read_bytes())
    return dest


def stored_with_resized_copy(h: Harness, photos: Path, name: str) -> tuple[Path, Path]:
    """A photo stored, then a resized copy of it (copy.jpg), each in a batch of its own."""
    original = place(photos, h, name)
    h.upsert(original)
    copy = resized_copy(original, h.root / "copy.jpg")
    h.upsert(copy)
    return original, copy


def test_an_edited_copy_of_a_photo_is_a_pdq_duplicate_whatever_clip_says(make_harness, photos: Path):
    h = make_harness(duplicates__threshold=1.0)  # CLIP alone flags nothing but identical vectors
    original = place(photos, h, "skagen.jpg")
    h.upsert(original)
    copies = [resized_copy(original, h.root / "small.jpg"), resized_copy(original, h.root / "gray.jpg", gray=True),
              resized_copy(original, h.root / "q30.jpg", scale=1.0, quality=30)]
    h.upsert(*copies)
    rows = h.store.rows_by_id([v.id for v in all_verdicts(h.store).values()])
    by_path = {r.path: r for r in rows.values()}
    first = by_path[str(original)]
    assert first.status == "ok"
    earlier = {first.id}  # a copy matches the nearest hash: the original, or a copy judged before it
    for copy in sorted(copies, key=lambda p: (p.stat().st_mtime, str(p))):
        row = by_path[str(copy)]
        assert (row.status, row.signal) == ("duplicate", "pdq") and row.match_id in earlier, copy.name
        assert row.pdq_distance is not None and row.pdq_distance <= 31
        earlier.add(row.id)
        assert row.score is not None and row.score < 1.0  # the score stays the vectors' cosine


def test_different_photos_of_one_scene_are_never_copies(make_harness, photos: Path):
    h = make_harness(duplicates__threshold=1.0)
    placed = [place(photos, h, p.name) for p in sorted(photos.glob("*.jpg"))]
    h.upsert(*placed)
    verdicts = all_verdicts(h.store)
    assert {v.status for v in verdicts.values()} == {"ok"}
    stored = h.store.get_many([str(p) for p in placed])
    for group in (("bar55", "bar55_2"), ("grand_canyon_1", "grand_canyon_2", "grand_canyon_3"),
                  ("skagen", "skagen_2"), ("pool", "pool_2")):
        for a, b in itertools.combinations(group, 2):
            ha, hb = stored[str(h.root / f"{a}.jpg")], stored[str(h.root / f"{b}.jpg")]
            assert ha.pdq is not None and hb.pdq is not None
            assert pdq.distance(ha.pdq, hb.pdq) > 31, (a, b)


def test_copies_judged_in_one_batch_point_at_the_oldest_by_pdq(make_harness, photos: Path):
    h = make_harness(duplicates__threshold=1.0)
    original = place(photos, h, "pool.jpg")
    copy = resized_copy(original, h.root / "pool small.jpg")
    h.upsert(original, copy)  # one batch: the copy is newer (written after)
    verdicts = all_verdicts(h.store)
    assert verdicts[str(copy)].status == "duplicate" and verdicts[str(copy)].match_id == verdicts[str(original)].id
    assert verdicts[str(original)].status == "ok"
    assert signal_of(h, verdicts[str(copy)].id) == "pdq"


def test_actions_are_chosen_per_signal(make_harness, photos: Path, tmp_path: Path):
    h = make_harness(duplicates__threshold=0.0, duplicates__actions='{pdq = "quarantine", clip = "flag"}',
                     quarantine__dir=str(tmp_path / "q"))
    original, copy = stored_with_resized_copy(h, photos, "wayne.jpg")
    other = place(photos, h, look_alike(h, original, photos), "other.jpg")  # CLIP >= 0 (random weights here)
    h.upsert(other)
    assert not copy.exists() and (tmp_path / "q" / "copy.jpg").exists()  # a copy: moved
    assert other.exists()  # a look-alike by CLIP only (threshold 0): flagged where it is
    verdicts = all_verdicts(h.store)
    assert signal_of(h, verdicts[str(other)].id) == "clip" and verdicts[str(other)].status == "duplicate"
    assert h.metrics.registry.get_sample_value("clipwatch_verdicts_total", {
        "kind": "duplicate", "action": "quarantine", "signal": "pdq"}) == 1
    assert h.metrics.registry.get_sample_value("clipwatch_verdicts_total", {
        "kind": "duplicate", "action": "flag", "signal": "clip"}) == 1


def look_alike(h: Harness, original: Path, photos: Path) -> str:
    """Another photo whose vector points the same way as the original's in the test's random-weight CLIP."""
    def vector(path: Path) -> np.ndarray:
        return h.embedder.embed_images([h.embedder.prepare(path.read_bytes(), 10**8)])[0]

    target = vector(original)
    others = [p for p in sorted(photos.glob("*.jpg")) if p.name != original.name]
    return max(others, key=lambda p: float(vector(p) @ target)).name


def test_the_pdq_signal_can_be_turned_off(make_harness, photos: Path):
    h = make_harness(duplicates__threshold=1.0, duplicates__pdq_distance=-1)
    original, copy = stored_with_resized_copy(h, photos, "snow.jpg")
    assert all_verdicts(h.store)[str(copy)].status == "ok"


def test_a_dismissed_pdq_pair_is_not_flagged_again(make_harness, photos: Path, cli):
    h = make_harness(duplicates__threshold=1.0)
    original, copy = stored_with_resized_copy(h, photos, "sunset.jpg")
    row = all_verdicts(h.store)[str(copy)]
    assert row.status == "duplicate"
    assert cli("dismiss", str(row.id))[0] == 0
    h.service.decisions.refresh(h.store)
    data = copy.read_bytes()
    copy.unlink()
    h.feed(Change(ChangeKind.DELETE, str(copy)))
    again = h.root / "uploaded again.jpg"  # the same bytes, later: the decision is about content
    again.write_bytes(data)
    h.upsert(again)
    assert all_verdicts(h.store)[str(again)].status == "ok"


# --- the hash: Meta's bits, from the pixels the worker decoded -------------------------------------------------


def test_hashes_are_metas_bits_in_metas_hex_format(photos: Path):
    """python-threatexchange writes a hash as the 256 bits of pdqhash's vector, most significant first."""
    for path in sorted(photos.glob("*.jpg"))[:6]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        bits, quality = pdqhash.compute(pixels)
        expected = f"{int(''.join(str(int(b)) for b in bits), 2):064x}"
        ours, our_quality = pdq.pdq_of_full(pixels)
        assert (ours.hex(), our_quality) == (expected, quality)


def test_hashes_conform_to_metas_reference_on_the_full_resolution_file(photos: Path, embedder):
    """Meta's correctness rule: for images of quality >= 80, within 10 bits of the reference's hash of the same
    file (here: pdqhash on the full-resolution array), though hashed from the decode threads' reduced image."""
    distances = []
    for path in sorted(photos.glob("*.jpg")):
        full = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        reference, quality = pdq.pdq_of_full(full)
        ours = pdq.hashes_of(embedder.decode(path.read_bytes(), 10**8), "").pdq  # what the worker stores
        if quality >= 80:
            distances.append(pdq.distance(reference, ours))  # type: ignore[arg-type]
    assert len(distances) >= 20 and max(distances) <= 10, distances


def test_hash_prints_what_the_row_holds(make_harness, photos: Path, cli):
    h = make_harness()
    image = place(photos, h, "jesper.jpg")
    h.upsert(image)
    stored = h.store.get_many([str(image)])[str(image)]
    code, out, _ = cli("hash", str(image), "--json")
    line = json.loads(out)
    assert code == 0
    assert stored.pdq is not None and stored.md5 is not None
    assert line == {"path": str(image), "pdq": stored.pdq.hex(), "quality": stored.pdq_quality, "md5": stored.md5,
                    "sha256": stored.sha256}
    (h.root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    code, out, err = cli("hash", str(h.root / "broken.jpg"), str(image))
    assert code == 1 and "broken.jpg" in err and out.split() == [stored.pdq.hex(), str(stored.pdq_quality), stored.md5,
                                                   stored.sha256, str(image)]


# --- the index -------------------------------------------------------------------------------------------------


def test_the_pdq_index_finds_nearest_leaves_out_low_quality_and_follows_removals():
    rng = np.random.default_rng(1)
    codes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(300)]
    index = PerceptualIndex(min_quality=50)
    index.upsert((i, c, 90) for i, c in enumerate(codes))
    index.upsert([(1000, codes[5], 10)])  # the same hash, too flat to decide anything: not indexed
    near = bytearray(codes[7])
    near[0] ^= 0b111  # 3 bits away
    assert index.nearest_many([bytes(near)], 1) == [[(7, 3)]]
    assert index.nearest_many([codes[5]], 1)[0] == [(5, 0)]
    assert index.nearest_many([codes[7]], 1, exclude={7})[0][0][0] != 7
    index.remove([7, 0])
    assert len(index) == 298 and index.code_of(299) == codes[299]  # the last row moved into a hole
    assert index.nearest_many([codes[7]], 1)[0][0][1] > 31
    index.upsert([(5, codes[5], 20)])  # its quality fell (a new file at that row): forgotten
    assert index.code_of(5) is None


# --- migration: tables made before PDQ and MD5 were kept -------------------------------------------------------


def test_an_older_table_gets_the_columns_and_its_rows_their_hashes_without_the_model(
        make_harness, photos: Path):
    h = make_harness()
    images = [place(photos, h, name) for name in ("donna.jpg", "blackie.jpg")]
    h.upsert(*images)
    ids = {v.id for v in all_verdicts(h.store).values()}
    h.service.close()
    downgrade(h)
    again = make_harness()  # the start adds the columns
    assert {r.md5 for r in again.rows().values()} == {None}
    scanned = again.service.scan()
    assert scanned.queued == 2 and again.embedder.calls == []  # read again, hashed, never embedded
    rows = again.rows()
    assert {r.id for r in rows.values()} == ids
    assert all(r.md5 is not None and r.pdq is not None and r.pdq_quality is not None for r in rows.values())
    assert again.service.scan().queued == 0  # hashed rows are current


def downgrade(h: Harness) -> None:
    """Drop the columns this version added: a table made by the version before has none of them."""
    raw = open_store(h.config)
    try:
        for column in ("md5", "pdq", "pdq_quality", "signal", "pdq_distance"):
            raw._fetch(f"ALTER TABLE {raw.t} DROP COLUMN {raw.quote(column)}")  # type: ignore[attr-defined]
    finally:
        raw.close()


# --- every instance, every index mode; the answer to POST /check -----------------------------------------------


def follow(h: Harness) -> IndexSync:
    """The index sync the daemon runs (Service.run), on its own connection."""
    s = h.service
    assert s.index is not None and s.references is not None
    return IndexSync(open_store(h.config), s.index, h.embedder.identity, s._sync_from, 60.0, s.references, 60.0,
                     h.metrics, s.store_health, s.decisions, copies=s.copies)


def test_a_copy_of_another_servers_photo_is_found_through_the_sync(make_harness, photos: Path, tmp_path: Path):
    (tmp_path / "b").mkdir()
    b = make_harness(store__instance="server-b", watch__paths=str(tmp_path / "b"), duplicates__threshold=1.0)
    a = make_harness(store__instance="server-a", duplicates__threshold=1.0)
    original = place(photos, a, "grand_canyon_2.jpg")
    a.upsert(original)
    sync = follow(b)
    try:
        assert sync.sync_once() >= 1  # b learns a's row, its hash with it
    finally:
        sync.store.close()
    copy = resized_copy(original, tmp_path / "b" / "copy.jpg", gray=True)
    b.upsert(copy)
    row = b.verdicts()[str(copy)]
    assert row.status == "duplicate" and row.match_id == a.verdicts()[str(original)].id
    assert signal_of(b, row.id) == "pdq"


@pytest.mark.parametrize("store_url", ["mariadb"], indirect=True)
def test_with_the_search_in_the_database_copies_are_still_found_by_pdq(make_harness, photos: Path,
                                                                       tmp_path: Path):
    (tmp_path / "b").mkdir()
    b = make_harness(index__where="database", store__instance="server-b", watch__paths=str(tmp_path / "b"),
                     duplicates__threshold=1.0)
    a = make_harness(index__where="database", store__instance="server-a", duplicates__threshold=1.0)
    assert isinstance(a.service.index, DatabaseIndex)
    original = place(photos, a, "spiff.jpg")
    a.upsert(original)
    sync = follow(b)
    try:
        sync.sync_once()
    finally:
        sync.store.close()
    copy = resized_copy(original, tmp_path / "b" / "copy.jpg")
    b.upsert(copy)
    row = b.verdicts()[str(copy)]
    assert row.status == "duplicate" and signal_of(b, row.id) == "pdq"
    assert row.score is not None and row.score < 1.0  # the cosine, read from the store (no vectors in memory)


def test_check_says_which_signal_decided(make_harness, photos: Path, tmp_path: Path):
    h = make_harness(duplicates__threshold=1.0)
    original = place(photos, h, "cold_water.jpg")
    h.upsert(original)
    s = h.service
    answers = Answers(h.config, h.embedder, s.index, h.store, threading.Lock(), s.references, s.decisions,
                      s.copies)
    copy = resized_copy(original, tmp_path / "upload.jpg")
    answer = answers.check(copy.read_bytes())
    assert (answer["status"], answer["signal"], answer["match_path"]) == ("duplicate", "pdq", str(original))
    assert answer["pdq_distance"] <= 31 and answer["pdq_quality"] >= 50 and len(answer["pdq"]) == 64
    exact = answers.check(original.read_bytes())
    assert (exact["status"], exact["signal"]) == ("duplicate", "sha256")
    assert answers.check((photos / "snow.jpg").read_bytes())["status"] == "ok"
    assert len(all_verdicts(h.store)) == 1  # nothing stored


def test_the_review_page_shows_which_signal_decided_and_the_distance(make_harness, photos: Path, tmp_path: Path):
    set_user(str(tmp_path / "users"), *ANA)
    h = make_harness(metrics__listen="127.0.0.1:0", http__users_file=str(tmp_path / "users"),
                     duplicates__threshold=1.0)
    assert h.service._http is not None
    original, copy = stored_with_resized_copy(h, photos, "anne_helene.jpg")
    row = h.store.rows_by_id([all_verdicts(h.store)[str(copy)].id])
    bits = next(iter(row.values())).pdq_distance
    status, _, page = Client(h.service._http.port, h.metrics).request("GET", "/", auth=ANA, headers=HTML)
    assert status == 200
    assert 'class="signal pdq"' in page.decode() and f"{bits} bits" in page.decode()


def test_calibrate_for_pdq_measures_the_decided_pairs_distances(make_harness, photos: Path, cli):
    h = make_harness(duplicates__threshold=0.0)
    original, copy = stored_with_resized_copy(h, photos, "new_wave_1.jpg")
    other = place(photos, h, look_alike(h, original, photos), "other.jpg")
    h.upsert(other)
    rows = {r.path: r for r in h.store.rows_by_id([v.id for v in all_verdicts(h.store).values()]).values()}
    assert rows[str(copy)].signal == "pdq" and rows[str(other)].signal == "clip"
    assert cli("confirm", str(rows[str(copy)].id))[0] == 0
    assert cli("dismiss", str(rows[str(other)].id))[0] == 0
    code, out, _ = cli("calibrate", "--for", "pdq", "--json")
    report = json.loads(out)
    assert code == 0 and report["key"] == "duplicates.pdq_distance" and report["current"] == 31
    assert (report["positives"], report["negatives"]) == (1, 1)
    stored = h.store.get_many([str(p) for p in (original, copy, other)])
    matched = stored[str(original)] if rows[str(other)].match_id == stored[str(original)].id else stored[str(copy)]
    expected = {pdq.distance(stored[str(copy)].pdq, stored[str(original)].pdq),  # type: ignore[arg-type]
                pdq.distance(stored[str(other)].pdq, matched.pdq)}  # type: ignore[arg-type]
    assert {p["threshold"] for p in report["curve"]} == expected


def test_a_mirrored_or_rotated_copy_is_found_among_the_clip_candidates(make_harness, photos: Path):
    h = make_harness(duplicates__threshold=1.0)
    original = place(photos, h, "blackie.jpg")
    h.upsert(original)
    img = Image.open(original).convert("RGB")
    mirrored, turned = h.root / "mirrored.jpg", h.root / "turned.jpg"
    ImageOps.mirror(img).save(mirrored, quality=90)
    img.transpose(Image.Transpose.ROTATE_90).save(turned, quality=90)
    h.upsert(mirrored)  # its own batch: the original is its nearest stored row
    h.upsert(turned)
    stored = h.store.get_many([str(original), str(mirrored)])
    assert pdq.distance(stored[str(original)].pdq, stored[str(mirrored)].pdq) > 64  # type: ignore[arg-type]
    rows = {r.path: r for r in h.store.rows_by_id([v.id for v in all_verdicts(h.store).values()]).values()}
    for copy in (mirrored, turned):
        row = rows[str(copy)]
        assert (row.status, row.signal) == ("duplicate", "pdq"), copy.name
        assert row.pdq_distance is not None and row.pdq_distance <= 31
