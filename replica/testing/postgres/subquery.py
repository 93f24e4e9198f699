"""Subquery shapes on the Postgres dev server: the clause split by Postgres's own parser, the
conditions judged by Postgres, and in-memory copies of the tables the shape reads.

pglast (Postgres's parser) splits the ``where`` into conditions and branches exactly as the fake
does (``fake/subquery.py``: a condition is a maximal subtree without a subquery, or one
``x [NOT] IN (SELECT col FROM t [WHERE …])``; NOT pushed down; numbered left to right), so the tags
come from the same ``Split`` and the same md5 (``fake.subquery.tag_value``). What differs is who
judges a condition: Postgres, per row, over ``VALUES`` (as ``PgTable.compile_where``), with each
subquery replaced by ``x = ANY($n::type[])`` where ``$n`` holds the values the subquery selects now.

Those values, and the rows that move in, come from copies of the root and inner tables kept by
the shape: read in the snapshot's REPEATABLE READ transaction and then fed every decoded
transaction the snapshot does not contain, so after a transaction the copies are exactly as it
left them, whatever was committed since (the moves go in that transaction's place in the log).
Judgements are cached per row value and dropped when a table a subquery reads changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, enums, parse_sql, visitors
from pglast.parser import ParseError
from pglast.stream import RawStream

from replica.testing.fake.subquery import Condition, Split
from replica.testing.fake.tables import Row
from replica.testing.fake.where import WhereError
from replica.testing.postgres.catalog import PgConn, PgTable, Snapshot, in_snapshot, quote_ident, read_tables

__all__ = ["Subqueries", "check_subqueries", "read_copies", "relations_read"]

Relation = tuple[str, str]
_BATCH_PARAMS = 30_000  # Postgres takes at most 65,535 parameters per statement


def _parse(where: str) -> ast.Node:
    try:
        statement = parse_sql(f"SELECT 1 WHERE {where}")[0].stmt
    except ParseError as exc:
        raise WhereError(f"syntax error: {exc}") from None
    assert isinstance(statement, ast.SelectStmt) and statement.whereClause is not None
    return statement.whereClause


def _sublinks(node: ast.Node) -> list[ast.SubLink]:
    found: list[ast.SubLink] = []

    class Finder(visitors.Visitor):  # type: ignore[misc]
        def visit_SubLink(self, ancestors: Any, sub: ast.SubLink) -> Any:  # noqa: N802
            found.append(sub)
            return visitors.Skip

    Finder()(node)
    return found


def _column(node: Any) -> str | None:
    """The column a ColumnRef names (its last field), or None for anything else."""
    if isinstance(node, ast.ColumnRef) and all(isinstance(f, ast.String) for f in node.fields):
        return str(node.fields[-1].sval)
    return None


def _needle(node: Any) -> str | tuple[str, ...] | None:
    """What a subquery compares: a column, the columns of a row ``(a, b)``, or None for anything else."""
    if isinstance(node, ast.RowExpr):
        names = tuple(_column(arg) for arg in node.args or ())
        return None if None in names else names  # type: ignore[return-value]
    return _column(node)


@dataclass
class _Lookup:
    """One ``needle IN (SELECT columns FROM relation [AS alias] [WHERE where])`` (a row needle:
    as many columns as it has)."""

    relation: Relation
    alias: str
    columns: tuple[str, ...]
    where: ast.Node | None
    needle: Any  # the outer expression (a column or a row of columns at the root)


def _lookup(sub: ast.SubLink) -> _Lookup:
    select = sub.subselect
    width = len(sub.testexpr.args or ()) if isinstance(sub.testexpr, ast.RowExpr) else 1
    if (
        sub.subLinkType != enums.SubLinkType.ANY_SUBLINK or sub.operName
        or not isinstance(select, ast.SelectStmt) or select.op != enums.SetOperation.SETOP_NONE
        or select.valuesLists or select.withClause or select.groupClause or select.havingClause
        or select.sortClause or select.limitCount or select.limitOffset or select.distinctClause
        or len(select.targetList or ()) != width or len(select.fromClause or ()) != 1
        or not isinstance(select.fromClause[0], ast.RangeVar)
    ):
        raise WhereError("only `x [NOT] IN (SELECT column FROM table [WHERE …])` subqueries are supported")
    columns = tuple(_column(target.val) for target in select.targetList)
    if None in columns:
        raise WhereError("a subquery must select columns")
    source = select.fromClause[0]
    relation = (source.schemaname or "public", source.relname)
    alias = source.alias.aliasname if source.alias is not None else source.relname
    return _Lookup(relation, alias, columns, select.whereClause, sub.testexpr)  # type: ignore[arg-type]


def check_subqueries(where: str) -> None:
    """WhereError unless every subquery has a supported form and each one at the root stands
    alone as a condition (under AND/OR/NOT only), as Electric requires."""
    root = _parse(where)
    pending = _sublinks(root)
    while pending:
        found = _lookup(pending.pop())
        if found.where is not None:
            pending.extend(_sublinks(found.where))
    for leaf in _leaves(root):
        subs = _sublinks(leaf)
        if subs and not (isinstance(leaf, ast.SubLink) and _needle(leaf.testexpr) is not None):
            raise WhereError("a subquery must be a condition of its own: `column [NOT] IN (SELECT …)`")


def relations_read(where: str) -> set[Relation]:
    """Every table the clause's subqueries read (nested ones too)."""
    out: set[Relation] = set()
    pending = _sublinks(_parse(where))
    while pending:
        found = _lookup(pending.pop())
        out.add(found.relation)
        if found.where is not None:
            pending.extend(_sublinks(found.where))
    return out


# --- the clause as branches of conditions (the fake's rules) ---


def _boolean(node: Any, op: enums.BoolExprType) -> bool:
    return isinstance(node, ast.BoolExpr) and node.boolop == op


def _leaves(node: Any) -> list[Any]:
    if isinstance(node, ast.BoolExpr):
        return [leaf for arg in node.args for leaf in _leaves(arg)]
    return [node]


def _fold(node: Any) -> Any:
    """AND/OR as the fake parses them: binary, left-associative (``a AND b AND c`` = ``(a AND b) AND c``)."""
    if isinstance(node, ast.BoolExpr) and node.boolop != enums.BoolExprType.NOT_EXPR:
        args = [_fold(arg) for arg in node.args]
        folded = args[0]
        for arg in args[1:]:
            folded = ast.BoolExpr(boolop=node.boolop, args=(folded, arg))
        return folded
    if _boolean(node, enums.BoolExprType.NOT_EXPR):
        return ast.BoolExpr(boolop=enums.BoolExprType.NOT_EXPR, args=(_fold(node.args[0]),))
    return node


def _split(root: Any) -> tuple[list[Any], list[tuple[int, ...]]]:
    """(condition nodes, branches): the fake's ``split_where`` over a pglast tree."""
    conditions: list[Any] = []
    seen: dict[tuple[int, bool], int] = {}

    def position(node: Any, negated: bool) -> int:
        if (id(node), negated) not in seen:
            conditions.append(ast.BoolExpr(boolop=enums.BoolExprType.NOT_EXPR, args=(node,)) if negated else node)
            seen[(id(node), negated)] = len(conditions) - 1
        return seen[(id(node), negated)]

    def dnf(node: Any, negated: bool) -> list[tuple[int, ...]]:
        if _boolean(node, enums.BoolExprType.NOT_EXPR):
            return dnf(node.args[0], not negated)
        if isinstance(node, ast.BoolExpr) and _sublinks(node):
            left, right = (dnf(arg, negated) for arg in node.args)
            if (node.boolop == enums.BoolExprType.OR_EXPR) != negated:
                return left + right
            return [tuple(sorted(set(a) | set(b))) for a in left for b in right]
        return [(position(node, negated),)]

    branches = dnf(root, False)
    return conditions, list(dict.fromkeys(branches))


# --- asking Postgres ---


class _Batch:
    """Expressions over one table's rows, judged by Postgres for many rows in one query. Each
    subquery in them is replaced by ``needle = ANY($n::type[])`` (a row needle: ``IN (SELECT * FROM
    unnest($n::t1[], $m::t2[]))``), the arrays holding what the subquery selects now."""

    def __init__(self, conn: PgConn, table: PgTable, alias: str, nodes: Sequence[Any], params: Sequence[str],
                 types: Callable[[int], list[str]]) -> None:
        self.conn, self.table = conn, table
        numbers: dict[int, int] = {}  # the clause's $n → this query's, in order of use

        class Params(visitors.Visitor):  # type: ignore[misc]
            def visit_ParamRef(self, ancestors: Any, ref: ast.ParamRef) -> Any:  # noqa: N802
                numbers.setdefault(ref.number, len(numbers) + 1)

            def visit_SubLink(self, ancestors: Any, sub: ast.SubLink) -> Any:  # noqa: N802
                Params()(sub.testexpr)  # the needle is judged here; the subquery's own where is not
                return visitors.Skip

        for node in nodes:
            Params()(node)
        self.fixed: list[str | None] = [params[n - 1] if n <= len(params) else None for n in numbers]
        self.uses: list[tuple[int, int]] = []  # (lookup, column) per array, numbered after the clause's params
        uses = self.uses

        class Rewrite(visitors.Visitor):  # type: ignore[misc]
            def visit_ParamRef(self, ancestors: Any, ref: ast.ParamRef) -> Any:  # noqa: N802
                return ast.ParamRef(number=numbers[ref.number])

            def visit_SubLink(self, ancestors: Any, sub: ast.SubLink) -> Any:  # noqa: N802
                first = len(numbers) + len(uses) + 1
                kinds = types(sub.subLinkId)
                uses.extend((sub.subLinkId, k) for k in range(len(kinds)))
                needle = Rewrite()(copy.deepcopy(sub.testexpr))
                if len(kinds) == 1:
                    any_of = _parse(f"NULL = ANY(${first}::{kinds[0]}[])")
                    any_of.lexpr = needle
                    return any_of
                arrays = ", ".join(f"${first + k}::{kind}[]" for k, kind in enumerate(kinds))
                member = _parse(f"(NULL, NULL) IN (SELECT * FROM unnest({arrays}))")
                member.testexpr = needle
                return member

        texts = [RawStream()(Rewrite()(copy.deepcopy(node))) for node in nodes]
        self.first = len(numbers) + len(uses) + 1
        self.columns = list(table.columns)
        names = ", ".join(quote_ident(c) for c in ["_replica_ord", *self.columns])
        self.head = "SELECT _replica_ord, " + ", ".join(f"({t})" for t in texts) + " FROM (VALUES "
        self.tail = f") AS {quote_ident(alias)}({names})"
        self.check()

    def arrays(self, values: Callable[[int], list[tuple[str | None, ...]]]) -> list[list[str | None]]:
        return [[found[k] for found in values(lookup)] for lookup, k in self.uses]

    def check(self) -> None:
        """Plan the expressions once (unknown columns, a reference to the outer query: WhereError)."""
        try:
            self.judge([], [[] for _ in self.uses])
            self.judge([dict.fromkeys(self.columns)], [[] for _ in self.uses])
        except psycopg.Error as exc:
            raise WhereError(exc.diag.message_primary or str(exc)) from None

    def judge(self, rows: Sequence[Row], arrays: Sequence[list[str | None]]) -> list[list[bool | None]]:
        out: list[list[bool | None]] = []
        per_row = len(self.columns) + 1
        step = max(1, _BATCH_PARAMS // per_row)
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            values, params = [], [*self.fixed, *arrays]
            for i, row in enumerate(part):
                base = self.first + i * per_row
                cells = [f"${base}::int8"] + [
                    f"${base + 1 + k}::{self.table.sqltypes[c]}" for k, c in enumerate(self.columns)]
                values.append("(" + ", ".join(cells) + ")")
                params.extend([str(i), *(row[c] for c in self.columns)])
            found = sorted(self.conn.rows(self.head + ", ".join(values) + self.tail, params), key=lambda r: int(r[0]))
            out.extend([list(r[1:]) for r in found])
        return out


class Subqueries:
    """A subquery shape's conditions over its copies of the tables it reads (module docstring)."""

    def __init__(self, conn: PgConn, root: PgTable, where: str, params: Sequence[str]) -> None:
        self.conn, self.root = conn, root
        tree = _fold(_parse(where))
        check_subqueries(where)
        self.lookups: list[_Lookup] = []
        pending = list(_sublinks(tree))
        while pending:  # number every subquery (nested ones too) through subLinkId
            sub = pending.pop(0)
            sub.subLinkId = len(self.lookups)
            self.lookups.append(_lookup(sub))
            if self.lookups[-1].where is not None:
                pending.extend(_sublinks(self.lookups[-1].where))
        self.tables: dict[Relation, PgTable] = {(root.schema, root.name): root}
        for relation in {lookup.relation for lookup in self.lookups} - set(self.tables):
            found = read_tables(conn, name=relation)
            if not found:
                raise WhereError(f'relation "{relation[0]}.{relation[1]}" does not exist')
            self.tables[relation] = found[0]
        for lookup in self.lookups:
            for column in lookup.columns:
                if column not in self.tables[lookup.relation].columns:
                    raise WhereError(f'column "{column}" does not exist')

        def array_type(index: int) -> list[str]:
            lookup = self.lookups[index]
            return [self.tables[lookup.relation].sqltypes[column] for column in lookup.columns]

        nodes, branches = _split(tree)
        self._root = _Batch(conn, root, root.name, nodes, params, array_type)
        self._inner = {i: _Batch(conn, self.tables[lk.relation], lk.alias, [lk.where], params, array_type)
                       for i, lk in enumerate(self.lookups) if lk.where is not None}
        self.rows: dict[Relation, dict[Any, Row]] = {relation: {} for relation in self.tables}
        self._values: dict[int, list[tuple[str | None, ...]]] = {}
        self._truths: dict[int, dict[tuple[str | None, ...], list[bool | None]]] = {}
        conditions = []
        for i, node in enumerate(nodes):
            needle = _needle(node.testexpr) if isinstance(node, ast.SubLink) else None
            if needle is None and _boolean(node, enums.BoolExprType.NOT_EXPR) and isinstance(node.args[0], ast.SubLink):
                needle = _needle(node.args[0].testexpr)
            conditions.append(Condition(self._truth(i), needle))
        self.split = Split(tuple(conditions), tuple(branches))

    @property
    def relations(self) -> set[Relation]:
        return set(self.tables)

    def _truth(self, index: int) -> Callable[[Row], Any]:
        return lambda row: self.judge(-1, [row])[0][index]

    # --- the copies ---

    def load(self, rows: dict[Relation, list[Row]]) -> None:
        for relation, found in rows.items():
            table = self.tables[relation]
            self.rows[relation] = {table.identity(row): row for row in found}
        self._forget()

    def apply(self, relation: Relation, old: Row | None, new: Row | None) -> None:
        """One decoded change of a table the shape reads, in commit order."""
        table, rows = self.tables[relation], self.rows[relation]
        if old is not None:
            rows.pop(table.identity(old), None)
        if new is not None:
            rows[table.identity(new)] = new
        if any(lookup.relation == relation for lookup in self.lookups):
            self._forget()

    def _forget(self) -> None:
        self._values.clear()
        self._truths.clear()

    def root_rows(self) -> list[Row]:
        return list(self.rows[(self.root.schema, self.root.name)].values())

    # --- judging ---

    def judge(self, batch: int, rows: Iterable[Row]) -> list[list[bool | None]]:
        """Each row's truths of batch ``batch`` (-1: the root's conditions; i: lookup i's where)."""
        target = self._root if batch < 0 else self._inner[batch]
        cache = self._truths.setdefault(batch, {})
        rows = list(rows)
        keys = [tuple(row[c] for c in target.columns) for row in rows]
        missing = {key: row for key, row in zip(keys, rows, strict=True) if key not in cache}
        if missing:
            arrays = target.arrays(self.values)
            for key, truths in zip(missing, target.judge(list(missing.values()), arrays), strict=True):
                cache[key] = truths
        return [cache[key] for key in keys]

    def values(self, index: int) -> list[tuple[str | None, ...]]:
        """What lookup ``index`` selects now (distinct; NULLs kept: NOT IN needs them)."""
        if index not in self._values:
            lookup = self.lookups[index]
            rows = list(self.rows[lookup.relation].values())
            if lookup.where is not None:
                rows = [row for row, truths in zip(rows, self.judge(index, rows), strict=True) if truths[0] is True]
            self._values[index] = list(dict.fromkeys(tuple(row[c] for c in lookup.columns) for row in rows))
        return self._values[index]

    def prime(self) -> None:
        """Judge every root row in one query (else a transaction's moves ask row by row)."""
        self.judge(-1, self.root_rows())


def read_copies(conn: PgConn, subqueries: Subqueries) -> tuple[Snapshot, dict[Relation, list[Row]]]:
    """The snapshot's visibility and full copies of every table the shape reads, in one REPEATABLE
    READ transaction (the shape's own rows are then judged from the root's copy)."""

    def read(db: Any) -> dict[Relation, list[Row]]:
        copies: dict[Relation, list[Row]] = {}
        for relation, table in subqueries.tables.items():
            columns = list(table.columns)
            found = db.execute(f"SELECT {table.select_list(columns)} FROM {table.qualified}").fetchall()
            copies[relation] = [dict(zip(columns, values, strict=True)) for values in found]
        return copies

    copies, xmin, xmax, xip = in_snapshot(conn, read)
    return Snapshot([], xmin, xmax, xip), copies
