"""typemap: Postgres text → SQLite values (design.md §5), in Python (``values``) and in SQL (``sql``),
and the ``TableSchema`` a shape's ``electric-schema`` becomes (``schema``). Pure.

May import: ``replica.errors``. Never imported by: nothing; every layer above may use it.
"""
