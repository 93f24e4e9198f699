"""Store.apply against a dict model (R9), redelivery (R3) and staging-split invariance (R4)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.protocol import Change, Checkpoint, Commit, Shape
from replica.protocol.wire import build_key
from replica.status import ShapeStatus
from replica.store.store import Store

PROPS = settings(deadline=None, max_examples=120)
SHAPE = Shape("items")
SCHEMA = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}, "n": {"type": "int8"}}
COLUMNS = ("title", "n")

Row = dict[str, Any]

ids = st.integers(0, 4)
titles = st.one_of(st.none(), st.sampled_from(["", "a", "b", "NULL", "ünï", "x'; --"]))
numbers = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
full_row = st.fixed_dictionaries({"title": titles, "n": numbers})
partial_row = st.fixed_dictionaries({}, optional={"title": titles, "n": numbers}).filter(bool)
operations = st.one_of(
    st.tuples(st.just("insert"), ids, full_row),
    st.tuples(st.just("update"), ids, partial_row),  # replica=default: PK + changed columns
    st.tuples(st.just("update"), ids, full_row),  # replica=full: the whole row
    st.tuples(st.just("delete"), ids, st.just({})),
)


def to_change(op: tuple[str, int, Row]) -> Change:
    kind, id_, row = op
    value: dict[str, str | None] = {"id": str(id_)}
    for column, cell in row.items():
        value[column] = None if cell is None else str(cell)
    return Change(kind, build_key("public", "items", [str(id_)]), value, {"operation": kind})


def model_apply(model: dict[int, Row], op: tuple[str, int, Row]) -> None:
    """Electric's key-map semantics, as the client-development guide describes them."""
    kind, id_, row = op
    if kind == "delete":
        model.pop(id_, None)
    elif kind == "insert" or set(row) == set(COLUMNS):
        model[id_] = {**dict.fromkeys(COLUMNS), **row}
    elif id_ in model:
        model[id_].update(row)


def table(store: Store) -> list[tuple[Any, ...]]:
    conn = store.connection
    if not conn.table_exists(None, "items"):
        return []
    return [tuple(r) for r in conn.execute('SELECT "id", "title", "n" FROM "items" ORDER BY "id"')]


def expected(model: dict[int, Row]) -> list[tuple[Any, ...]]:
    return [(id_, row["title"], row["n"]) for id_, row in sorted(model.items())]


def timeless(store: Store) -> list[ShapeStatus]:
    return [replace(status, last_synced_at=None) for status in store.status()]


@contextmanager
def fresh_store() -> Iterator[Store]:
    with Store(":memory:") as store:
        yield store


Op = tuple[str, int, Row]


def make_commits(ops: list[Op], cuts: list[int], publish: list[bool]) -> list[tuple[Commit, list[Op]]]:
    """Split ops at ``cuts`` into commits (with the ops each carries); each is staged or
    published as ``publish`` says, and the last one is always published."""
    bounds = sorted({c % (len(ops) + 1) for c in cuts} | {0, len(ops)})
    pieces = list(itertools.pairwise(bounds)) or [(0, 0)]
    commits = []
    for i, (start, end) in enumerate(pieces):
        up_to_date = i == len(pieces) - 1 or publish[i % len(publish)]
        checkpoint = Checkpoint("h1", f"{i + 1}_0", None, SCHEMA, up_to_date)
        changes = tuple(to_change(op) for op in ops[start:end])
        commits.append((Commit(SHAPE, changes, checkpoint, up_to_date, refetch=i == 0), ops[start:end]))
    return commits


log_strategy = st.tuples(
    st.lists(operations, max_size=25),
    st.lists(st.integers(0, 30), max_size=6),
    st.lists(st.booleans(), min_size=1, max_size=6),
)


@pytest.mark.guarantee("R9")
@PROPS
@given(log_strategy)
def test_apply_equals_the_dict_model_at_every_published_boundary(log: Any) -> None:
    """After each publish the table is the model of the log so far; staged commits change nothing visible."""
    ops, cuts, publish = log
    model: dict[int, Row] = {}
    visible: list[tuple[Any, ...]] = []
    with fresh_store() as store:
        for commit, carried in make_commits(ops, cuts, publish):
            for op in carried:
                model_apply(model, op)
            applied = store.apply(commit)
            if commit.up_to_date:
                visible = expected(model)
                assert applied.published and applied.rows == len(model)
            assert table(store) == visible


@pytest.mark.guarantee("R3")
@PROPS
@given(log_strategy)
def test_applying_every_commit_twice_equals_once(log: Any) -> None:
    """A redelivered commit (a retry after a lost acknowledgement) changes nothing."""
    ops, cuts, publish = log
    with fresh_store() as once, fresh_store() as twice:
        for commit, _ops in make_commits(ops, cuts, publish):
            once.apply(commit)
            twice.apply(commit)
            twice.apply(commit)
            assert table(twice) == table(once)
            assert twice.checkpoint(SHAPE) == once.checkpoint(SHAPE)
            assert timeless(twice) == timeless(once)


@pytest.mark.guarantee("R3")
@PROPS
@given(log_strategy, st.integers(0, 100))
def test_a_stale_redelivery_is_skipped(log: Any, pick: int) -> None:
    """Replaying an older commit of the same handle after newer ones leaves everything as it is."""
    ops, cuts, publish = log
    commits = [commit for commit, _ops in make_commits(ops, cuts, publish)]
    with fresh_store() as store:
        for commit in commits:
            store.apply(commit)
        before, position = table(store), store.checkpoint(SHAPE)
        old = commits[pick % len(commits)]
        if old is not commits[-1] and not old.refetch:
            assert not store.apply(old).published
        assert table(store) == before and store.checkpoint(SHAPE) == position


@pytest.mark.guarantee("R4")
@PROPS
@given(st.lists(operations, max_size=25), st.lists(st.integers(0, 30), max_size=8))
def test_staging_split_invariance(ops: list[Op], cuts: list[int]) -> None:
    """The same log staged in any number of pieces, then published, equals one published commit."""
    model: dict[int, Row] = {}
    for op in ops:
        model_apply(model, op)
    with fresh_store() as whole, fresh_store() as pieces:
        [(single, _ops)] = make_commits(ops, [], [True])
        whole.apply(single)
        staged = [commit for commit, _ops in make_commits(ops, cuts, [False])]
        assert [c.up_to_date for c in staged] == [False] * (len(staged) - 1) + [True]
        for commit in staged:
            pieces.apply(commit)
        assert table(pieces) == table(whole) == expected(model)
