"""The planner alone: changes, stored rows and loaded files in, a plan out. No model, database or file system,
so each case takes microseconds."""

from __future__ import annotations

import numpy as np

from clipwatch.batcher import Loaded
from clipwatch.changes import Change
from clipwatch.errors import FileRejected
from clipwatch.planner import needs_loading, plan
from clipwatch.store import Delete, DeleteTree, Rename, SameBytes, StoredFile, Touch
from clipwatch.vocab import ChangeKind, Reason, Result

MODEL = "m"
PIXELS = np.zeros((3, 4, 4), np.float32)


def row(id_: int, path: str, sha: str, *, instance: str = "me", model: str = MODEL, mtime: float = 1.0) -> StoredFile:
    return StoredFile(id_, path, sha, 10, mtime, model, "ok", instance)


def loaded(sha: str, mtime: float = 1.0) -> Loaded:
    return Loaded(sha256=sha, size=10, mtime=mtime, pixels=PIXELS)


def up(path: str) -> Change:
    return Change(ChangeKind.UPSERT, path)


def mv(src: str, dest: str) -> Change:
    return Change(ChangeKind.MOVE, src, dest)


def rm(path: str) -> Change:
    return Change(ChangeKind.DELETE, path)


def run(changes, rows=(), files=(), same=None, gone=frozenset(), keep=False):  # type: ignore[no-untyped-def]
    return plan(changes, {r.path: r for r in rows}, list(files), same or {}, gone, model=MODEL, instance="me",
                keep_deleted=keep)


def test_same_bytes_as_the_row_at_that_path_is_a_touch():
    p = run([up("/r/a")], [row(1, "/r/a", "s1")], [loaded("s1", mtime=5.0)])
    assert p.ops == (Touch("/r/a", 10, 5.0),) and p.entries == () and p.counts == {Result.UNCHANGED: 1}


def test_new_bytes_at_a_known_path_rewrite_its_row_which_no_file_may_match():
    p = run([up("/r/a")], [row(1, "/r/a", "old")], [loaded("new")])
    (entry,) = p.entries
    assert (entry.path, entry.own_id, entry.pixels is PIXELS) == ("/r/a", 1, True)
    assert p.excluded == {1}


def test_a_second_upsert_of_a_path_in_one_batch_supersedes_the_first():
    p = run([up("/r/a"), up("/r/a")], files=[loaded("v1"), loaded("v2")])
    assert [(e.key, e.sha256) for e in p.entries] == [(1, "v2")]


def test_a_file_written_then_renamed_goes_under_its_final_name():
    p = run([up("/r/tmp"), mv("/r/tmp", "/r/final")], files=[loaded("s"), None])
    assert [e.path for e in p.entries] == ["/r/final"] and p.ops == ()


def test_a_rewritten_file_renamed_in_the_same_batch_keeps_its_row():
    p = run([up("/r/a"), mv("/r/a", "/r/b")], [row(7, "/r/a", "old")], [loaded("new"), None])
    assert p.ops == (Rename("/r/a", "/r/b"),)
    assert [(e.path, e.own_id) for e in p.entries] == [("/r/b", 7)] and p.excluded == {7}


def test_renamed_over_another_stored_file_that_row_is_replaced_and_excluded():
    p = run([mv("/r/a", "/r/b")], [row(1, "/r/a", "sa"), row(2, "/r/b", "sb")], [None])
    assert p.ops == (Rename("/r/a", "/r/b"),) and p.excluded == {2} and p.counts == {Result.MOVED: 1}


def test_a_new_file_with_the_bytes_of_a_row_whose_file_is_gone_is_that_row_moved():
    gone = row(3, "/r/old", "s", mtime=9.0)
    p = run([up("/r/new")], [], [loaded("s", mtime=9.0)], same={"s": [SameBytes(gone, PIXELS)]},
            gone=frozenset({"/r/old"}))
    assert p.ops == (Rename("/r/old", "/r/new"), Touch("/r/new", 10, 9.0)) and p.entries == ()


def test_a_copy_written_while_its_original_is_renamed_does_not_take_the_original_row():
    # Found by the property test: the content-move rule took a's row for the copy, though the batch's own
    # rename says where a went; the rename then had no source and failed the batch.
    original = row(1, "/r/a", "s")
    p = run([up("/r/copy"), mv("/r/a", "/r/b")], [original], [loaded("s"), None],
            same={"s": [SameBytes(original, PIXELS)]}, gone=frozenset({"/r/a"}))
    assert p.ops == (Rename("/r/a", "/r/b"),)
    assert [(e.path, e.same_as_row) for e in p.entries] == [("/r/copy", 1)] and p.follow_up == ()


def test_of_two_new_files_with_a_gone_rows_bytes_the_one_with_its_mtime_is_the_moved_one():
    # An unpaired rename (a directory not watched yet) and a fresh copy of the same file in one batch, the
    # copy first: the rename keeps the file's mtime, the copy has a new one.
    gone = row(1, "/r/old", "s", mtime=5.0)
    p = run([up("/r/copy"), up("/r/new/moved"), rm("/r/old")], [gone],
            [loaded("s", mtime=9.0), loaded("s", mtime=5.0), None], same={"s": [SameBytes(gone, PIXELS)]},
            gone=frozenset({"/r/old"}))
    assert p.ops == (Rename("/r/old", "/r/new/moved"), Touch("/r/new/moved", 10, 5.0))
    assert [(e.path, e.same_as_row) for e in p.entries] == [("/r/copy", 1)]


def test_a_delete_followed_by_the_same_file_under_another_name_is_a_move():
    # Found by the property test: renamed twice through directories inotify did not watch yet, so the old
    # name's delete came before the new name in the batch, and the row was lost.
    gone = row(2, "/r/f001", "s", mtime=5.0)
    p = run([up("/r/f003"), rm("/r/f001"), up("/r/f004"), rm("/r/f003")], [gone],
            [Loaded(error=FileRejected(Reason.NOT_FOUND, "renamed again")), None, loaded("s", mtime=5.0), None],
            same={"s": [SameBytes(gone, PIXELS)]}, gone=frozenset({"/r/f001"}))
    assert p.ops == (Rename("/r/f001", "/r/f004"), Touch("/r/f004", 10, 5.0))
    assert p.entries == () and p.excluded == frozenset() and Result.DELETED not in p.counts
    taken = run([rm("/r/f001"), mv("/r/x", "/r/f001"), up("/r/f004")], [gone, row(3, "/r/x", "t")],
                [None, None, loaded("s", mtime=5.0)], same={"s": [SameBytes(gone, PIXELS)]},
                gone=frozenset({"/r/f001"}))
    assert taken.ops == (Delete("/r/f001"), Rename("/r/x", "/r/f001"))  # the name was taken: no way back
    assert [e.path for e in taken.entries] == ["/r/f004"]


def test_a_row_renamed_earlier_in_the_batch_follows_an_unpaired_rename_from_its_new_name():
    # Found by the property test: renamed (paired), then renamed again unpaired; the rule looked for the
    # row at its old path, and the new name's file was taken for a new one.
    original = row(2, "/r/f001", "s", mtime=5.0)
    p = run([mv("/r/f001", "/r/f003"), up("/r/f005"), rm("/r/f003")], [original],
            [None, loaded("s", mtime=5.0), None], same={"s": [SameBytes(original, PIXELS)]},
            gone=frozenset({"/r/f001", "/r/f003"}))
    assert p.ops == (Rename("/r/f001", "/r/f003"), Rename("/r/f003", "/r/f005"), Touch("/r/f005", 10, 5.0))
    assert p.entries == ()


def test_a_copy_of_a_row_whose_file_still_exists_is_an_entry_that_reuses_its_vector():
    original = row(3, "/r/original", "s")
    p = run([up("/r/copy")], [], [loaded("s")], same={"s": [SameBytes(original, PIXELS)]})
    (entry,) = p.entries
    assert (entry.same_as_row, entry.pixels) == (3, None) and p.ops == ()


def test_the_bytes_of_another_models_or_another_instances_row_are_not_a_move():
    theirs = row(3, "/r/old", "s", instance="other")
    stale = row(4, "/r/older", "s", model="previous")
    p = run([up("/r/new")], [], [loaded("s")], same={"s": [SameBytes(theirs, PIXELS), SameBytes(stale, PIXELS)]},
            gone=frozenset({"/r/old", "/r/older"}))
    (entry,) = p.entries
    assert entry.same_as_row == 3 and p.ops == ()  # a copy of the other server's image, reusing its vector


def test_copies_in_one_batch_come_out_oldest_first_and_only_the_oldest_is_embedded():
    p = run([up("/r/c"), up("/r/a"), up("/r/b")], files=[loaded("s", 3.0), loaded("s", 1.0), loaded("s", 2.0)])
    assert [(e.path, e.same_as_entry) for e in p.entries] == [("/r/a", None), ("/r/b", 1), ("/r/c", 1)]
    assert [e.pixels is not None for e in p.entries] == [True, False, False]


def test_a_row_rewritten_in_this_batch_is_no_source_of_vectors_for_its_old_bytes():
    # a.jpg and b.jpg swap contents: neither may take the other's stale vector.
    rows = [row(1, "/r/a", "sa"), row(2, "/r/b", "sb")]
    same = {"sb": [SameBytes(rows[1], PIXELS)], "sa": [SameBytes(rows[0], PIXELS)]}
    p = run([up("/r/a"), up("/r/b")], rows, [loaded("sb"), loaded("sa")], same=same)
    assert [(e.path, e.same_as_row, e.pixels is not None) for e in p.entries] == [("/r/a", None, True),
                                                                                ("/r/b", None, True)]


def test_a_delete_drops_the_entry_of_a_file_written_earlier_in_the_batch():
    p = run([up("/r/a"), rm("/r/a")], [row(1, "/r/a", "old")], [loaded("new"), None])
    assert p.entries == () and p.ops == (Delete("/r/a"),) and p.excluded == {1}


def test_with_store_on_delete_keep_nothing_is_deleted():
    p = run([rm("/r/a"), Change(ChangeKind.DELETE_TREE, "/r/d")], [row(1, "/r/a", "s"), row(2, "/r/d/x", "s")],
            [None, None], keep=True)
    assert p.ops == () and p.excluded == frozenset()


def test_a_deleted_directory_takes_the_batchs_entries_below_it():
    p = run([up("/r/d/x"), up("/r/dx"), Change(ChangeKind.DELETE_TREE, "/r/d")], [row(5, "/r/d/y", "s")],
            [loaded("s1"), loaded("s2"), None])
    assert [e.path for e in p.entries] == ["/r/dx"] and p.ops == (DeleteTree("/r/d"),) and p.excluded == {5}


def test_an_unreadable_file_is_a_failure_and_a_vanished_one_is_only_counted():
    bad = FileRejected(Reason.DECODE_ERROR, "broken")
    p = run([up("/r/broken"), up("/r/gone")], files=[
        Loaded(sha256="x", size=1, mtime=1.0, decode_error=bad), Loaded(error=FileRejected(Reason.NOT_FOUND, "gone"))])
    assert [(f.path, f.error) for f in p.failures] == [("/r/broken", bad)]
    assert p.entries == () and p.counts == {Result.VANISHED: 1}


def test_a_rename_to_a_name_the_store_cannot_hold_deletes_the_row_and_fails_the_file():
    p = run([mv("/r/a", "/r/caf\udce9")], [row(1, "/r/a", "s")], [None])
    assert p.ops == (Delete("/r/a"),) and [f.error.reason for f in p.failures] == [Reason.BAD_NAME]


def test_rejudging_a_row_takes_its_stored_vector_and_excludes_it():
    p = run([Change(ChangeKind.REJUDGE, "/r/a")], [row(1, "/r/a", "s")], [None])
    (entry,) = p.entries
    assert (entry.rejudge, entry.same_as_row, entry.own_id) == (True, 1, 1) and p.excluded == {1}


def test_renames_whose_source_is_unknown_or_replaced_or_whose_file_changed_are_read():
    changes = [mv("/r/new", "/r/x"), mv("/r/a", "/r/y"), rm("/r/b"), mv("/r/b", "/r/z"),
               Change(ChangeKind.DELETE_TREE, "/r/d"), mv("/r/d/c", "/r/w"), mv("/r/e", "/r/v")]
    rows = {p: row(i, p, "s") for i, p in enumerate(["/r/a", "/r/b", "/r/d/c", "/r/e"])}
    dests = {"/r/x": (10, 1.0), "/r/y": (10, 1.0), "/r/z": (10, 1.0), "/r/w": (10, 1.0), "/r/v": (99, 2.0)}
    assert needs_loading(changes, rows, dests) == [0, 3, 5, 6]


def test_a_file_that_changed_before_it_was_renamed_is_judged_by_its_new_bytes():
    # Found by the property test: re-encoded, then renamed; the re-encode's event named a path that was gone
    # when it was read, and the rename carried the row with the old bytes.
    p = run([up("/r/a"), mv("/r/a", "/r/b")], [row(1, "/r/a", "old")],
            [Loaded(error=FileRejected(Reason.NOT_FOUND, "renamed")), loaded("new")])
    assert p.ops == (Rename("/r/a", "/r/b"),)
    assert [(e.path, e.sha256, e.own_id) for e in p.entries] == [("/r/b", "new", 1)]
    same = run([mv("/r/a", "/r/b")], [row(1, "/r/a", "s")], [loaded("s", mtime=3.0)])
    assert same.ops == (Rename("/r/a", "/r/b"), Touch("/r/b", 10, 3.0)) and same.entries == ()
