"""A small parser and evaluator for the subset of Postgres ``where`` clauses the fake supports.

Grammar (keywords case-insensitive)::

    expr      := and_expr (OR and_expr)*
    and_expr  := not_expr (AND not_expr)*
    not_expr  := NOT not_expr | predicate
    predicate := operand [ cmp operand | IS [NOT] NULL | [NOT] IN '(' operand (',' operand)* ')'
                          | [NOT] IN '(' SELECT column (',' column)* FROM table [WHERE expr] ')'
                          | [NOT] LIKE operand ]
    operand   := integer | decimal | 'string' | TRUE | FALSE | NULL | $n | column | "column"
               | '-' number | '(' expr ')' | '(' column (',' column)+ ')'   (a row: only before IN (SELECT …))
    cmp       := = | <> | != | < | <= | > | >=

Evaluation follows SQL three-valued logic (NULL is ``None``); a row is in the shape only when
the clause is TRUE. Untyped literals and ``$n`` parameters take the type of the column they are
compared with: numeric column types compare numerically, bools as bools, everything else as text.
Type errors are found when the clause is compiled, as Postgres finds them when planning.

Subqueries (``IN (SELECT …)``, nested too) need ``tables``: each names another table's columns and
its current rows; a subquery is evaluated over those rows each time, in SQL's three-valued logic
(``x IN (empty)`` is FALSE even for a NULL ``x``). ``replica.testing.fake.subquery`` splits such a
clause into conditions for tags and moves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from replica.testing.fake.tables import Row, canonical_bool
from replica.testing.fake.where_ops import column_kind, compare_op, in_list, like_op, logic, select_member
from replica.testing.fake.where_ops import num_key as _num_key

__all__ = ["Tables", "WhereError", "column_kind", "compile_where"]

Predicate = Callable[[Row], bool]
_Eval = Callable[[Row], Any]
#: A table by name → (its columns' comparison kinds, its current rows), for subqueries.
Tables = Callable[[str], tuple[Mapping[str, str], Callable[[], Iterable[Row]]]]


class WhereError(ValueError):
    """The clause cannot be parsed or does not type-check; the message is shown to the client."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+\.\d*|\.\d+|\d+)
    | (?P<str>'(?:[^']|'')*')
    | (?P<qid>"(?:[^"]|"")+")
    | (?P<param>\$\d+)
    | (?P<op><>|!=|<=|>=|=|<|>|\(|\)|,|-)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false", "like", "select", "from", "where"})


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, str, qid, param, op, word, kw, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise WhereError(f"At location {pos}: syntax error at {text[pos:pos + 10]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        start = match.start(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        tokens.append(_Tok(kind, value, start))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


# --- typed AST nodes: each has .kind (num, bool, text, unknown, null) and compiles to a closure ---


@dataclass
class _Node:
    kind: str


@dataclass
class _Const(_Node):
    value: Any  # raw text for "unknown" literals/params, Python value otherwise


@dataclass
class _Column(_Node):
    name: str


@dataclass
class _Op(_Node):
    op: str
    args: list[_Node]


@dataclass
class _Row(_Node):
    """``(a, b)``: row-valued ``IN (SELECT x, y …)`` compares these columns together."""

    items: list[_Column]


@dataclass
class _Sub(_Node):
    """``needle [NOT] IN (SELECT columns FROM table [WHERE where])``; ``rows`` reads the table now.
    A ``_Row`` needle selects as many columns, compared element by element (as Postgres does)."""

    needle: _Node
    negated: bool
    columns: list[_Column]
    where: _Node | None
    rows: Callable[[], Iterable[Row]]


class _Parser:
    def __init__(
        self, text: str, params: Sequence[str], columns: Mapping[str, str], tables: Tables | None = None
    ) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.params = params
        self.columns = columns  # column name -> kind
        self.tables = tables

    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, kind: str, text: str) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            self.fail(f"expected {text!r}")

    def fail(self, what: str) -> None:
        tok = self.peek()
        found = "end of input" if tok.kind == "end" else repr(tok.text)
        raise WhereError(f"At location {tok.pos}: syntax error: {what}, found {found}")

    def parse(self) -> _Node:
        node = self.expr()
        if self.peek().kind != "end":
            self.fail("expected end of clause")
        return node

    def expr(self) -> _Node:
        node = self.and_expr()
        while self.accept("kw", "or"):
            node = _Op("bool", "or", [node, self.and_expr()])
        return node

    def and_expr(self) -> _Node:
        node = self.not_expr()
        while self.accept("kw", "and"):
            node = _Op("bool", "and", [node, self.not_expr()])
        return node

    def not_expr(self) -> _Node:
        if self.accept("kw", "not"):
            return _Op("bool", "not", [self.not_expr()])
        return self.predicate()

    def predicate(self) -> _Node:
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("=", "<>", "!=", "<", "<=", ">", ">="):
            self.take()
            return _Op("bool", "<>" if tok.text == "!=" else tok.text, [left, self.operand()])
        if self.accept("kw", "is"):
            negated = self.accept("kw", "not")
            self.expect("kw", "null")
            return _Op("bool", "is not null" if negated else "is null", [left])
        negated = False
        if tok.kind == "kw" and tok.text == "not" and self.peek(1).text in ("in", "like"):
            self.take()
            negated = True
        if self.accept("kw", "in"):
            self.expect("op", "(")
            if self.peek().kind == "kw" and self.peek().text == "select":
                return self.subquery(left, negated)
            items = [self.operand()]
            while self.accept("op", ","):
                items.append(self.operand())
            self.expect("op", ")")
            return _Op("bool", "not in" if negated else "in", [left, *items])
        if self.accept("kw", "like"):
            return _Op("bool", "not like" if negated else "like", [left, self.operand()])
        return left

    def subquery(self, needle: _Node, negated: bool) -> _Node:
        start = self.take()
        if self.tables is None:
            raise WhereError(f"At location {start.pos}: subqueries (SELECT) need the tables they read")
        column_toks = [self.take()]
        while self.accept("op", ","):
            column_toks.append(self.take())
        self.expect("kw", "from")
        table_tok = self.take()
        if any(t.kind not in ("word", "qid") for t in [*column_toks, table_tok]):
            self.fail("expected SELECT column FROM table")
        width = len(needle.items) if isinstance(needle, _Row) else 1
        if len(column_toks) != width:
            raise WhereError(f"At location {start.pos}: subquery has {'too many' if len(column_toks) > width else 'too few'} columns")
        try:
            kinds, rows = self.tables(_ident(table_tok))
        except KeyError:
            raise WhereError(f"At location {table_tok.pos}: relation {_ident(table_tok)!r} does not exist") from None
        for tok in column_toks:
            if _ident(tok) not in kinds:
                raise WhereError(f"At location {tok.pos}: unknown reference {_ident(tok)}")
        outer, self.columns = self.columns, kinds  # the inner WHERE names the inner table's columns
        try:
            where = self.expr() if self.accept("kw", "where") else None
        finally:
            self.columns = outer
        self.expect("op", ")")
        columns = [_Column(kinds[_ident(tok)], _ident(tok)) for tok in column_toks]
        return _Sub("bool", needle, negated, columns, where, rows)

    def operand(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            return _Const("num", Decimal(tok.text))
        if tok.kind == "op" and tok.text == "-" and self.peek().kind == "num":
            return _Const("num", -Decimal(self.take().text))
        if tok.kind == "str":
            return _Const("unknown", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "kw" and tok.text in ("true", "false"):
            return _Const("bool", tok.text == "true")
        if tok.kind == "kw" and tok.text == "null":
            return _Const("null", None)
        if tok.kind == "param":
            number = int(tok.text[1:])
            if not 1 <= number <= len(self.params):
                raise WhereError(f"At location {tok.pos}: parameter {tok.text} was not provided")
            return _Const("unknown", self.params[number - 1])
        if tok.kind in ("word", "qid"):
            name = _ident(tok)
            if name not in self.columns:
                raise WhereError(f"At location {tok.pos}: unknown reference {name}")
            return _Column(self.columns[name], name)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            if self.peek().text == "," and isinstance(node, _Column):
                items = [node]
                while self.accept("op", ","):
                    item = self.operand()
                    if not isinstance(item, _Column):
                        self.fail("expected a column in a row")
                    items.append(item)  # type: ignore[arg-type]
                self.expect("op", ")")
                if not (self.peek().text in ("in", "not") and self.peek(1 if self.peek().text == "in" else 2).text
                        == "(" and self.peek(2 if self.peek().text == "in" else 3).text == "select"):
                    self.fail("a row (a, b) is only supported before IN (SELECT …)")
                return _Row("row", items)
            self.expect("op", ")")
            return node
        self.i -= 1
        self.fail("expected a value or column")
        raise AssertionError("unreachable")


def _ident(tok: _Tok) -> str:
    return tok.text.lower() if tok.kind == "word" else tok.text[1:-1].replace('""', '"')


# --- type resolution and compilation ---


def _coerce(value: Any, kind: str) -> Any:
    """Turn an untyped literal/param text into a value of ``kind``."""
    if value is None:
        return None
    try:
        if kind == "num":
            return _num_key(value) if isinstance(value, str) else (0, value)
        if kind == "bool":
            return canonical_bool(value) == "t" if isinstance(value, str) else value
    except (ValueError, InvalidOperation):
        raise WhereError(f"invalid input syntax for type {'numeric' if kind == 'num' else 'boolean'}: {value!r}") from None
    return value


def _compile(node: _Node, expect: str | None = None) -> _Eval:
    """A closure computing the node's value for a row (num values as sort keys, NULL as None)."""
    if isinstance(node, _Const):
        value = _coerce(node.value, expect or ("text" if node.kind == "unknown" else node.kind))
        return lambda row: value
    if isinstance(node, _Column):
        name, kind = node.name, node.kind
        if kind == "num":
            return lambda row: None if row[name] is None else _num_key(row[name])  # type: ignore[arg-type]
        if kind == "bool":
            return lambda row: None if row[name] is None else row[name] == "t"
        return lambda row: row[name]
    if isinstance(node, _Sub):
        return _subquery(node)
    assert isinstance(node, _Op)
    if node.op in ("and", "or", "not"):
        parts = [_compile(_require_bool(arg), "bool") for arg in node.args]
        return logic(node.op, parts)
    if node.op in ("is null", "is not null"):
        inner = _compile(node.args[0])
        want_null = node.op == "is null"
        return lambda row: (inner(row) is None) == want_null
    kind = _common_kind(node.args)
    parts = [_compile(arg, kind) for arg in node.args]
    if node.op in ("in", "not in"):
        return in_list(parts[0], parts[1:], negated=node.op == "not in")
    if node.op in ("like", "not like"):
        if kind != "text":
            raise WhereError(f"operator does not exist: {kind} ~~ text")
        return like_op(parts[0], parts[1], negated=node.op == "not like")
    return compare_op(node.op, parts[0], parts[1])


def _require_bool(node: _Node) -> _Node:
    if node.kind == "unknown" and isinstance(node, _Const):
        return _Const("bool", _coerce(node.value, "bool"))
    if node.kind not in ("bool", "null"):
        raise WhereError(f"argument of AND/OR/NOT must be type boolean, not type {node.kind}")
    return node


def _common_kind(args: list[_Node]) -> str:
    kinds = {arg.kind for arg in args} - {"unknown", "null"}
    if len(kinds) > 1:
        raise WhereError(f"operator does not exist: {' vs '.join(sorted(kinds))} (cannot compare these types)")
    return kinds.pop() if kinds else "text"


def _subquery(node: _Sub) -> _Eval:
    outer = node.needle.items if isinstance(node.needle, _Row) else [node.needle]
    kinds = [_common_kind([a, b]) for a, b in zip(outer, node.columns, strict=True)]
    needles = [_compile(a, k) for a, k in zip(outer, kinds, strict=True)]
    columns = [_compile(c, k) for c, k in zip(node.columns, kinds, strict=True)]
    where = None if node.where is None else _compile(_require_bool(node.where), "bool")
    return select_member(needles, columns, node.rows, where, negated=node.negated)


def compile_where(
    text: str, params: Sequence[str], columns: Mapping[str, str], tables: Tables | None = None
) -> Predicate:
    """Compile ``text`` into ``row -> bool`` (True only when the clause is TRUE).

    ``params`` are the ``$1..$n`` values (text); ``columns`` maps each column name to its
    comparison kind (see ``column_kind``); ``tables`` resolves the tables subqueries read.
    Raises WhereError with a client-facing message.
    """
    evaluate = _compile(_require_bool(parse_where(text, params, columns, tables)), "bool")
    return lambda row: evaluate(row) is True


def parse_where(text: str, params: Sequence[str], columns: Mapping[str, str], tables: Tables | None = None) -> _Node:
    """The checked tree of ``text`` (``replica.testing.fake.subquery`` reads its conditions)."""
    tree = _Parser(text, params, columns, tables).parse()
    if tree.kind not in ("bool", "null", "unknown"):
        raise WhereError("WHERE clause must return a boolean")
    return tree


def compile_node(node: _Node) -> Callable[[Row], Any]:
    """A boolean condition of a parsed tree → ``row -> True | False | None``."""
    return _compile(_require_bool(node), "bool")
