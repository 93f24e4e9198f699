"""Reading test_decoding's output (the Postgres dev server's change stream) without a Postgres."""

from __future__ import annotations

import pytest

from replica.testing.fake.where import WhereError
from replica.testing.postgres.catalog import check_where_text, widen_xid
from replica.testing.postgres.decode import DecodeError, parse_lsn, read_transactions


def tx(*lines: str, xid: str = "750", commit: str = "0/16B3F70") -> list[tuple[str, str, str]]:
    return [("0/1", xid, f"BEGIN {xid}"), *(("0/2", xid, line) for line in lines), (commit, xid, f"COMMIT {xid}")]


def test_values_come_back_as_output_text_with_bools_as_t_and_f() -> None:
    line = ("table public.t: INSERT: id[integer]:1 b[boolean]:false f[double precision]:-Infinity "
            "\"Odd \"\"Name\"\"\"[text]:'it''s new-tuple: x[int]:2' a[integer[]]:'{{1,NULL},{3,4}}' "
            "v[bit varying]:B'101' ba[boolean[]]:'{t,f}' n[numeric]:NaN z[text]:null e[text]:''")
    (only,) = read_transactions(tx(line))
    assert (only.xid, only.lsn) == (750, 0x16B3F70)
    (change,) = only.changes
    assert change.operation == "insert" and change.relations == [("public", "t")] and change.old is None
    assert change.new == {"id": "1", "b": "f", "f": "-Infinity", 'Odd "Name"': "it's new-tuple: x[int]:2",
                          "a": "{{1,NULL},{3,4}}", "v": "101", "ba": "{t,f}", "n": "NaN", "z": None, "e": ""}


def test_updates_carry_the_old_row_and_unchanged_toast_is_filled_from_it() -> None:
    line = ("table s.\"T x\": UPDATE: old-key: id[integer]:1 doc[text]:'big' n[integer]:0 "
            "new-tuple: id[integer]:1 doc[text]:unchanged-toast-datum n[integer]:1")
    (change,) = read_transactions(tx(line))[0].changes
    assert change.relations == [("s", "T x")]
    assert change.old == {"id": "1", "doc": "big", "n": "0"}
    assert change.new == {"id": "1", "doc": "big", "n": "1"} and not change.unknown
    (bare,) = read_transactions(tx("table public.t: UPDATE: id[integer]:1 doc[text]:unchanged-toast-datum"))[0].changes
    assert bare.old is None and bare.unknown == {"doc"}


def test_deletes_truncates_and_unwanted_tables() -> None:
    lines = ("table public.t: DELETE: id[integer]:7", "table public.t: DELETE: (no-tuple-data)",
             "table public.a, public.t: TRUNCATE: restart_seqs", "table public.other: INSERT: id[integer]:1")
    changes = read_transactions(tx(*lines), lambda schema, name: name != "other")[0].changes
    assert [c.operation for c in changes] == ["delete", "delete", "truncate", "skipped"]
    assert changes[0].old == {"id": "7"} and changes[0].new is None and changes[1].old is None
    assert changes[2].relations == [("public", "a"), ("public", "t")]


def test_transactions_keep_commit_order_and_malformed_output_is_an_error() -> None:
    rows = tx("table public.t: INSERT: id[integer]:1", xid="9", commit="0/20") + tx(xid="8", commit="0/30")
    assert [(t.xid, t.lsn) for t in read_transactions(rows)] == [(9, 0x20), (8, 0x30)]
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    with pytest.raises(DecodeError):
        read_transactions(tx("table public.t: INSERT: id[integer:1"))


def test_where_text_that_could_break_out_of_its_expression_is_refused() -> None:
    check_where_text("title = 'a)(' AND \"we(ird\" > 1 AND (x OR y)")
    for bad in ("a = 1) OR (b = 2", "a = 1; DROP TABLE t", "a = 1 -- c", "(a = 1", "a = $$x$$"):
        with pytest.raises(WhereError):
            check_where_text(bad)
    # A subquery is no longer refused here: it is reported, and subquery.check_subqueries judges its form.
    assert check_where_text("a IN (SELECT b FROM t)") and not check_where_text("a = 'select'")


def test_xids_are_widened_next_to_the_snapshot() -> None:
    assert widen_xid(5, 2**32 + 10) == 2**32 + 5
    assert widen_xid(2**32 - 3, 2**32 + 10) == 2**32 - 3  # just before the epoch wrapped
    assert widen_xid(7, 2**32 - 5) == 2**32 + 7  # just after
