"""The ``replica`` command line.

    replica sync URL --table TABLE --db PATH [--name LOCAL] [--where SQL] [--param N=VALUE]...
                 [--columns a,b,...] [--replica default|full] [--header "Name: value"]...
                 [--secret S] [--once]

Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 the server refused the shape or another
fatal error, 2 a usage error (nothing was sent).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from replica.errors import ConfigError, ReplicaError, ShapeError
from replica.protocol import Shape
from replica.store import Applied
from replica.sync import Replica

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code 2 is ours too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"replica: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="replica", description="Keep a local SQLite copy of Electric shapes in sync.")
    parser.add_argument("--version", action="version", version=f"replica {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    sync = commands.add_parser(
        "sync",
        help="sync one shape into a SQLite table",
        description="Sync one Electric shape into a SQLite table, then follow its live changes "
        "until SIGTERM/SIGINT (or stop after the first up-to-date with --once). "
        "A second run on the same --db resumes where the last one stopped.",
    )
    sync.add_argument("url", metavar="URL", help="the shape endpoint, e.g. http://127.0.0.1:3000/v1/shape")
    sync.add_argument("--table", required=True, help="the Postgres table: name, schema.name or \"Quoted\"")
    sync.add_argument("--db", required=True, type=Path, help="the SQLite database file (created if missing)")
    sync.add_argument("--name", help="the local table name (default: the table name without schema)")
    sync.add_argument("--where", help="a row filter in Postgres SQL, e.g. \"status = $1\"")
    sync.add_argument(
        "--param", action="append", default=[], metavar="N=VALUE", help="value of $N in --where (repeatable)"
    )
    sync.add_argument("--columns", help="comma-separated columns to sync (must include the primary key)")
    sync.add_argument("--replica", choices=["default", "full"], default="default", help="update payloads")
    sync.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable)"
    )
    sync.add_argument("--secret", help="Electric's API secret (default: $ELECTRIC_SECRET if set)")
    sync.add_argument("--once", action="store_true", help="exit 0 once the first up-to-date is committed")
    sync.add_argument("-v", "--verbose", action="store_true", help="log every retry and commit")
    sync.set_defaults(func=_cmd_sync)

    demo = commands.add_parser(
        "demo",
        help="sync a sample table from a built-in fake Electric and watch live changes arrive",
        description="Start the built-in fake Electric on 127.0.0.1, sync its sample table 'items' into "
        "DB with `replica sync`, print rows, then make live changes and show them arrive.",
    )
    demo.add_argument("--db", type=Path, default=Path("demo.db"), help="database file (default: ./demo.db)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replica")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"replica: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        number, sep, value = item.partition("=")
        if not sep or not number.strip().isdigit():
            raise ConfigError(f"--param: expected N=VALUE (e.g. 1=open), got {item!r}")
        params[number.strip()] = value
    return params


def _parse_headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise ConfigError(f"--header: expected 'Name: value', got {item.split(':')[0]!r}…")
        headers[name.strip()] = value.strip()
    return headers


def _cmd_sync(args: argparse.Namespace) -> int:
    # Retries show as warnings, a shape's fatal error as one error line (the sync loop logs it).
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="replica: %(message)s", stream=sys.stderr
    )
    columns = None
    if args.columns is not None:
        columns = tuple(c.strip() for c in args.columns.split(",") if c.strip())
    shape = Shape(
        table=args.table,
        where=args.where,
        params=_parse_params(args.param),
        columns=columns,
        replica=args.replica,
        name=args.name,
    )
    headers = _parse_headers(args.header)
    secret = args.secret if args.secret is not None else os.environ.get("ELECTRIC_SECRET")
    created = not args.db.exists()
    published = False

    def on_commit(applied: Applied) -> None:
        nonlocal published
        published = True
        if args.verbose:
            print(f"replica: {applied.name}: {applied.rows} rows", file=sys.stderr)

    replica = Replica(args.db, args.url, shape, secret=secret, headers=headers, on_commit=on_commit)
    try:
        anyio.run(_run_until_signal, replica, args.once)
    except ShapeError as exc:
        print(f"replica: error: {exc}", file=sys.stderr)
        if created and not published:
            _remove_database(args.db)  # a refused shape leaves no trace behind
        return EXIT_FATAL
    except ReplicaError as exc:
        print(f"replica: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    failed = [s for s in replica.status() if s.state == "error"]
    if failed and created and not published:
        _remove_database(args.db)
    return EXIT_FATAL if failed else EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from replica.demo import run_demo

    return run_demo(args.db)


async def _run_until_signal(replica: Replica, once: bool) -> None:
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()  # the in-flight commit finishes in its thread (R6)
                    return

        tg.start_soon(watch_signals)
        try:
            await replica.run(once=once)
        except ShapeError:
            pass  # already logged; the caller reads the shapes' states
        tg.cancel_scope.cancel()


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", "-replica-lock"):
        target = Path(f"{path}{suffix}")
        if target.exists():
            target.unlink()


if __name__ == "__main__":
    sys.exit(main())
