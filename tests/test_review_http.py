"""The review queue over HTTP, on the daemon's own wiring (`Service.open` serves it), against both stores:
pairs side by side, filters and paging, thumbnails made from the files, what can never be served, and
decisions taken from the page's API landing in the database."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipwatch.web.review
from clipwatch import quarantine
from clipwatch.store import Upsert
from clipwatch.vocab import Status
from clipwatch.web.users import set_user
from conftest import Client, Harness, all_verdicts, write_image

ANA = ("ana", "correct horse")
HTML = {"Accept": "text/html"}


def rotated_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A landscape JPEG whose EXIF says: turn me 90 degrees (a phone held upright)."""
    write_image(path, seed=seed, size=size)
    with Image.open(path) as img:
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(path, exif=exif.tobytes())
    return path


def copy_later(src: Path, dest: Path, seconds: float = 10) -> Path:
    shutil.copyfile(src, dest)
    st = src.stat()
    os.utime(dest, (st.st_atime, st.st_mtime + seconds))
    return dest


@pytest.fixture
def served(make_harness: Callable[..., Harness], tmp_path: Path) -> tuple[Harness, Client]:
    set_user(str(tmp_path / "users"), *ANA)
    h = make_harness(metrics__listen="127.0.0.1:0", http__users_file=str(tmp_path / "users"))
    assert h.service._http is not None
    return h, Client(h.service._http.port, h.metrics)


def ingest_pair(h: Harness, seed: int = 1) -> tuple[Path, Path]:
    """a.jpg, then b.jpg: a copy of it written later (so b is the duplicate of a)."""
    original = write_image(h.root / "a.jpg", seed=seed)
    h.upsert(original)
    copy = copy_later(original, h.root / "b.jpg")
    h.upsert(copy)
    return original, copy


def ids_on(page: bytes) -> list[int]:
    return [int(i) for i in re.findall(rb'<li class="item" id="row-(\d+)"', page)]


def test_the_queue_shows_each_flagged_file_beside_its_match_newest_first(served):
    h, client = served
    original = rotated_photo(h.root / "a.jpg", seed=1)
    h.upsert(original)
    h.upsert(copy_later(original, h.root / "b.jpg"))
    other = write_image(h.root / "c.jpg", seed=2)
    h.upsert(other)
    h.upsert(copy_later(other, h.root / "d.jpg"))
    rows = h.verdicts()
    status, _, page = client.request("GET", "/", auth=ANA, headers=HTML)
    assert status == 200
    assert ids_on(page) == [rows[str(h.root / "d.jpg")].id, rows[str(h.root / "b.jpg")].id]
    text = page.decode()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        assert f'src="/thumb/{rows[str(h.root / name)].id}"' in text
    assert "48 × 64" in text  # the EXIF-rotated photo's pixels as shown
    status, headers, thumb = client.request("GET", f"/thumb/{rows[str(original)].id}", auth=ANA)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.size[0] < img.size[1]  # upright, as a viewer shows it
    status, _, whole = client.request("GET", f"/file/{rows[str(original)].id}", auth=ANA)
    assert status == 200 and whole == original.read_bytes()


def test_filters_and_pages_of_the_queue(served, monkeypatch: pytest.MonkeyPatch):
    h, client = served
    for seed, name in ((1, "a"), (2, "c")):
        first = write_image(h.root / f"{name}.jpg", seed=seed)
        h.upsert(first)
        h.upsert(copy_later(first, h.root / f"{name}-copy.jpg"))
    rows = h.verdicts()
    newest, older = rows[str(h.root / "c-copy.jpg")].id, rows[str(h.root / "a-copy.jpg")].id
    monkeypatch.setattr(clipwatch.web.review, "PAGE_SIZE", 1)
    _, _, page = client.request("GET", "/?status=duplicate", auth=ANA)
    assert ids_on(page) == [newest]
    link = re.search(rb'<a class="next" href="([^"]+)"', page)
    assert link is not None
    _, _, second = client.request("GET", link.group(1).decode().replace("&amp;", "&"), auth=ANA)
    assert ids_on(second) == [older]
    assert ids_on(client.request("GET", "/?status=prohibited", auth=ANA)[2]) == []
    assert ids_on(client.request("GET", "/?min_score=0.5&max_score=1", auth=ANA)[2]) == [newest]
    assert ids_on(client.request("GET", "/?instance=another-server", auth=ANA)[2]) == []
    assert client.request("GET", "/?min_score=high", auth=ANA)[0] == 400


def test_a_vanished_file_shows_as_such_and_nothing_outside_the_roots_is_served(served, tmp_path: Path):
    h, client = served
    original, _ = ingest_pair(h)
    rows = h.verdicts()
    original.unlink()  # the daemon has not seen it yet
    _, _, page = client.request("GET", "/", auth=ANA)
    assert b"file no longer here" in page and f'src="/thumb/{rows[str(original)].id}"'.encode() not in page
    assert client.request("GET", f"/thumb/{rows[str(original)].id}", auth=ANA)[0] == 404
    outside = write_image(tmp_path / "outside.jpg", seed=3)
    h.store.apply([Upsert(str(outside), "0" * 64, 10, 1.0, h.embedder.identity, np.ones(512, np.float32) / 512**.5,
                          Status.DUPLICATE, rows[str(h.root / "b.jpg")].id, 0.99)])
    row = all_verdicts(h.store)[str(outside)]
    for path in (f"/thumb/{row.id}", f"/file/{row.id}", "/thumb/999999", "/file/..%2F..%2Fetc%2Fpasswd",
                 "/thumb/" + str(outside), "/static/..%2F..%2F..%2Fconfig.py"):
        assert client.request("GET", path, auth=ANA)[0] == 404, path
    (h.root / "link.jpg").symlink_to(outside)  # a link under the root that leads out of it
    h.store.apply([Upsert(str(h.root / "link.jpg"), "1" * 64, 10, 1.0, h.embedder.identity,
                          np.ones(512, np.float32) / 512**.5)])
    link = all_verdicts(h.store)[str(h.root / "link.jpg")]
    assert client.request("GET", f"/file/{link.id}", auth=ANA)[0] == 404


def test_a_decision_from_the_page_lands_in_the_database_with_who_took_it(served):
    h, client = served
    original, _ = ingest_pair(h)
    copy = h.verdicts()[str(h.root / "b.jpg")]
    asked = json.dumps({"ids": [copy.id], "decision": "dismissed"}).encode()
    status, _, body = client.request("POST", "/api/decide", asked, auth=ANA)
    assert status == 200 and str(copy.id) in json.loads(body)["said"][0]
    assert h.verdicts()[str(h.root / "b.jpg")].status == Status.OK
    (decision,) = h.store.decisions()
    assert decision.decided_by == "ana (web)" and decision.row_id == copy.id
    assert ids_on(client.request("GET", "/", auth=ANA)[2]) == []
    status, _, body = client.request("POST", "/api/decide", b'{"ids": [424242], "decision": "confirmed"}', auth=ANA)
    assert status == 404 and b"424242" in body
    assert client.request("POST", "/api/decide", b'{"ids": "x"}', auth=ANA)[0] == 400


def post(client: Client, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    status, _, answer = client.request("POST", path, json.dumps(body).encode(), auth=ANA)
    return status, json.loads(answer)


def test_quarantine_either_file_of_a_pair_then_release_it_judged_again_and_undo(served, tmp_path: Path):
    h, client = served
    q = Path(h.config.quarantine.dir)
    original = write_image(h.root / "a.jpg", seed=1)
    h.upsert(original)
    copy = h.root / "sub" / "b.jpg"
    copy.parent.mkdir()
    h.upsert(copy_later(original, copy))
    rows = h.verdicts()
    a, b = rows[str(original)], rows[str(copy)]
    status, said = post(client, "/api/quarantine", {"id": b.id})
    assert status == 200 and "quarantined" in str(said)
    assert not copy.exists() and (q / "sub" / "b.jpg").read_bytes() == original.read_bytes()
    moved = h.verdicts()[str(q / "sub" / "b.jpg")]
    assert (moved.id, moved.status, moved.match_id) == (b.id, Status.DUPLICATE, a.id)  # the row followed, verdict kept
    status, said = post(client, "/api/release", {"id": b.id})
    assert status == 200 and copy.exists() and not (q / "sub" / "b.jpg").exists()
    back = h.verdicts()[str(copy)]
    assert (back.id, back.status) == (b.id, Status.OK)
    h.feed()  # the release queued the file to be judged again: the dismissed match does not flag it
    assert h.metrics.registry.get_sample_value("clipwatch_files_processed_total", {"result": "rejudged"}) == 1
    assert h.verdicts()[str(copy)].status == Status.OK
    entries = h.store.history(None, 10)
    assert [e.deed for e in entries] == ["released", "dismissed", "quarantined"]
    status, _ = post(client, "/api/undo", {"id": entries[0].id})  # undo the release: back into the quarantine
    assert status == 200 and not copy.exists() and (q / "sub" / "b.jpg").exists()
    again = h.verdicts()[str(q / "sub" / "b.jpg")]
    assert (again.id, again.status, again.match_id) == (b.id, Status.DUPLICATE, a.id)
    assert h.store.decisions() == []
    status, _ = post(client, "/api/quarantine", {"id": a.id})  # "quarantine the other": the original goes
    assert status == 200 and not original.exists() and (q / "a.jpg").exists()
    assert h.verdicts()[str(q / "a.jpg")].id == a.id
    assert post(client, "/api/quarantine", {"id": a.id})[0] == 409  # already there


def test_undo_a_dismissal_puts_the_verdict_back_and_forgets_the_decision(served):
    h, client = served
    original, _ = ingest_pair(h)
    b = h.verdicts()[str(h.root / "b.jpg")]
    assert post(client, "/api/decide", {"ids": [b.id], "decision": "dismissed"})[0] == 200
    assert h.verdicts()[str(h.root / "b.jpg")].status == Status.OK
    (entry,) = h.store.history(None, 10)
    assert (entry.deed, entry.row_id, entry.decided_by) == ("dismissed", b.id, "ana (web)")
    _, _, page = client.request("GET", "/history", auth=ANA)
    assert f'data-undo="{entry.id}"'.encode() in page
    assert post(client, "/api/undo", {"id": entry.id})[0] == 200
    restored = h.verdicts()[str(h.root / "b.jpg")]
    assert (restored.status, restored.match_id, restored.score) == (b.status, b.match_id, b.score)
    assert h.store.decisions() == []
    assert post(client, "/api/undo", {"id": 999999})[0] == 409
    _, _, page = client.request("GET", "/history", auth=ANA)
    assert f'data-undo="{entry.id}"'.encode() not in page  # shown as undone


def test_a_release_never_replaces_a_file_that_took_the_name(served):
    h, client = served
    q = Path(h.config.quarantine.dir)
    original, _ = ingest_pair(h)
    b = h.verdicts()[str(h.root / "b.jpg")]
    assert post(client, "/api/quarantine", {"id": b.id})[0] == 200
    newcomer = write_image(h.root / "b.jpg", seed=9)
    status, said = post(client, "/api/release", {"id": b.id})
    assert status == 409 and "holds another file" in str(said)
    assert (q / "b.jpg").exists() and newcomer.read_bytes() != (q / "b.jpg").read_bytes()


def test_a_prohibited_upload_is_shown_beside_its_reference_image(make_harness: Callable[..., Harness],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    refs = tmp_path / "refs"
    (refs / "weapons").mkdir(parents=True)
    knife = write_image(refs / "weapons" / "knife.jpg", seed=14, size=(96, 72))
    set_user(str(tmp_path / "users"), *ANA)
    h = make_harness(prohibited__reference_dir=str(refs), prohibited__action="flag", metrics__listen="127.0.0.1:0",
                     http__users_file=str(tmp_path / "users"), prohibited__prompts='["a photo of a cat"]')
    assert h.service._http is not None
    client = Client(h.service._http.port, h.metrics)
    upload = h.root / "upload.png"
    Image.open(knife).resize((80, 60)).save(upload)
    h.upsert(upload)
    row = h.verdicts()[str(upload)]
    assert (row.status, row.label) == ("prohibited", "weapons")
    _, _, page = client.request("GET", "/", auth=ANA)
    assert f'src="/reference/{row.id}"'.encode() in page and "reference “weapons”".encode() in page
    status, headers, thumb = client.request("GET", f"/reference/{row.id}", auth=ANA)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.size == (96, 72)
    h.upsert(write_image(h.root / "plain.jpg", seed=3))
    plain = h.verdicts()[str(h.root / "plain.jpg")]
    assert plain.status == "ok" and client.request("GET", f"/reference/{plain.id}", auth=ANA)[0] == 404
    _, copy = ingest_pair(h, seed=4)  # a duplicate flagged after the prohibited upload
    newer = h.verdicts()[str(copy)].id
    assert ids_on(client.request("GET", "/", auth=ANA)[2]) == [newer, row.id]  # both verdicts, newest first
    assert ids_on(client.request("GET", "/?status=prohibited", auth=ANA)[2]) == [row.id]
    monkeypatch.setattr(clipwatch.web.review, "PAGE_SIZE", 1)
    _, _, first = client.request("GET", "/", auth=ANA)
    link = re.search(rb'<a class="next" href="([^"]+)"', first)
    assert ids_on(first) == [newer] and link is not None
    assert ids_on(client.request("GET", link.group(1).decode().replace("&amp;", "&"), auth=ANA)[2]) == [row.id]


def test_a_quarantine_that_cannot_move_the_file_is_not_in_the_history(served, monkeypatch: pytest.MonkeyPatch):
    h, client = served
    _, copy = ingest_pair(h)
    b = h.verdicts()[str(copy)]
    real_complete = quarantine.complete

    def occupied(pending):  # type: ignore[no-untyped-def]  # another file takes the name first
        Path(pending.dest).write_bytes(b"someone else's file")
        return real_complete(pending)

    monkeypatch.setattr(quarantine, "complete", occupied)
    status, said = post(client, "/api/quarantine", {"id": b.id})
    assert status == 409 and "failed" in str(said) and copy.exists()
    assert h.verdicts()[str(copy)].id == b.id  # the row went back with the file
    assert h.store.history(None, 10) == [] and h.store.pending_moves() == []
