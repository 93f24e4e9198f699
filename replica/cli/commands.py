"""The ``replica`` command line.

    replica sync URL --table TABLE --db PATH [--name LOCAL] [--where SQL] [--param N=VALUE]...
                 [--columns a,b,...] [--replica default|full] [--header "Name: value"]...
                 [--secret S] [--once [--timeout SECONDS]] [--quiet] [--verbose]
    replica run -c FILE [--listen HOST:PORT] [--once [--timeout SECONDS]] [--log-format text|json] [--verbose]
    replica status (-c FILE | --db PATH) [--json]
    replica reset NAME (-c FILE | --db PATH)

Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 the server refused the shape or another
fatal error, 2 a usage error (nothing was sent).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import anyio

from replica.cli.exits import EXIT_FATAL, EXIT_OK, EXIT_USAGE
from replica.cli.once import OnceWatch, check_timeout, discarding, seconds
from replica.errors import ConfigError, ReplicaError, ShapeError
from replica.protocol.shape import Shape
from replica.store import Applied
from replica.sync import Replica
from replica.tuning import tune_process


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code 2 is ours too
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
    sync.add_argument("--ca-file", type=Path, metavar="PEM", help="verify TLS with this CA bundle (a private CA)")
    sync.add_argument("--once", action="store_true", help="exit 0 once the first up-to-date is committed")
    sync.add_argument(
        "--live", choices=["long-poll", "sse"], default="long-poll",
        help="how live changes arrive: a long-poll per change (default) or one held Server-Sent Events stream, "
        "which falls back to long-polls where streams fail",
    )
    sync.add_argument("--timeout", type=seconds, metavar="SECONDS",
                      help="with --once: exit 1 if the first up-to-date is not committed within SECONDS")
    sync.add_argument("-q", "--quiet", action="store_true", help="no summary line after --once; errors only")
    sync.add_argument("-v", "--verbose", action="store_true", help="log every retry and commit")
    sync.set_defaults(func=_cmd_sync)

    run = commands.add_parser(
        "run",
        help="sync every shape of a config file, with health, readiness and metrics endpoints",
        description="Sync every shape of the TOML config FILE into its database and follow live changes "
        "until SIGTERM/SIGINT. Serves /healthz, /readyz and /metrics on --listen (default from the config, "
        "else 127.0.0.1:9470).",
    )
    run.add_argument("-c", "--config", required=True, type=Path, metavar="FILE", help="the TOML config file")
    run.add_argument("--listen", metavar="HOST:PORT", help="where to serve /healthz, /readyz and /metrics")
    run.add_argument("--once", action="store_true", help="exit 0 once every shape is up to date (no endpoint)")
    run.add_argument("--timeout", type=seconds, metavar="SECONDS",
                     help="with --once: exit 1 if a shape is not up to date within SECONDS")
    run.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    run.set_defaults(func=_cmd_run)

    status = commands.add_parser(
        "status",
        help="show each shape's state, rows, position and lag (read-only; works while syncing)",
        description="Show each shape of a replica database: state, rows, handle, offset, last_synced_at, "
        "lag and last error. Read-only: safe while `replica run` syncs the database.",
    )
    _add_target(status)
    status.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    status.set_defaults(func=_cmd_status)

    reset = commands.add_parser(
        "reset",
        help="forget one shape's position so that it resyncs from scratch",
        description="Forget the stored position of shape NAME (its local table name) so that the next "
        "`replica run` or `replica sync` resyncs it from scratch; its rows stay visible until the new "
        "snapshot commits. Refuses while a replica process syncs the database: stop it first.",
    )
    reset.add_argument("name", metavar="NAME", help="the shape's local table name")
    _add_target(reset)
    reset.set_defaults(func=_cmd_reset)

    demo = commands.add_parser(
        "demo",
        help="sync a sample table from a built-in fake Electric and watch live changes arrive",
        description="Start the built-in fake Electric on 127.0.0.1, sync its sample table 'items' into "
        "DB with `replica sync`, print rows, then make live changes and show them arrive.",
    )
    demo.add_argument("--db", type=Path, default=Path("demo.db"), help="database file (default: ./demo.db)")
    demo.add_argument(
        "--postgres",
        action="store_true",
        help="serve the table from a throwaway Postgres cluster (needs initdb/pg_ctl and the postgres extra) "
        "through the Postgres dev server, and make the changes with SQL",
    )
    demo.add_argument(
        "--writes",
        action="store_true",
        help="show local writes instead: the daemon with 'items' writable, a write with sqlite3 shown at once, "
        "uploaded to the fake's write endpoint and back through the shape, and one queued while the endpoint is down",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-c", "--config", type=Path, metavar="FILE", help="the config file naming the database")
    target.add_argument("--db", type=Path, metavar="PATH", help="the SQLite database file")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replica")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_process()
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
    check_timeout(args)
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

    def on_commit(applied: Applied) -> None:
        if args.verbose:
            elapsed = time.monotonic() - started
            print(f"replica: {applied.name}: {applied.rows} rows ({elapsed:.2f} s since the sync began)",
                  file=sys.stderr)

    if args.ca_file is not None and not args.ca_file.is_file():
        raise ConfigError(f"--ca-file: {args.ca_file} is not a file (a CA bundle in PEM format)")
    verify = str(args.ca_file) if args.ca_file is not None else True
    watch = OnceWatch()
    # Inline: this process is the syncer (a child process would only double it).
    replica = Replica(args.db, args.url, shape, secret=secret, headers=headers, on_commit=on_commit, verify=verify,
                      process="inline", live=args.live, observer=watch.observe)
    started = time.monotonic()

    async def sync() -> bool:
        nonlocal started
        started = time.monotonic()  # the sync begins once the event loop runs (anyio imports its backend first)
        watch.start()
        return await _run_until_signal(replica, args.once, args.timeout)

    with discarding(args.db):  # a run that committed nothing leaves no new database behind
        try:
            finished = anyio.run(sync)
        except ReplicaError as exc:
            print(f"replica: error: {exc}", file=sys.stderr)
            return EXIT_FATAL
    if not finished:
        for line in watch.timed_out(args.timeout, replica.status()):
            print(f"replica: error: {line}", file=sys.stderr)
        return EXIT_FATAL
    if any(s.state == "error" for s in replica.status()):
        return EXIT_FATAL
    if args.once and not args.quiet and replica.status()[0].last_synced_at is not None:
        for line in watch.summary(args.db, [shape.local_name]):
            print(line, file=sys.stderr)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from replica.cli.config import load_config, parse_listen
    from replica.cli.daemon import run_daemon

    check_timeout(args)
    config = load_config(args.config)
    if args.log_format:
        config = replace(config, log_format=args.log_format)
    if args.verbose:
        config = replace(config, log_level="debug")
    listen = parse_listen(args.listen) if args.listen else None
    return run_daemon(config, listen=listen, once=args.once, timeout=args.timeout)


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from replica.cli.config import load_config
    from replica.cli.status import daemon_view, read_status, render_table

    live = None
    if args.config is not None:
        config = load_config(args.config)
        db = config.database
        live = daemon_view(*config.listen)  # a running daemon knows live state and true lag
    else:
        db = args.db
    rows = read_status(db, live=live)
    print(json.dumps(rows, indent=2) if args.json else render_table(rows))
    return EXIT_OK


def _cmd_reset(args: argparse.Namespace) -> int:
    from replica.cli.config import load_config
    from replica.cli.status import reset_shape

    db = load_config(args.config).database if args.config is not None else args.db
    try:
        rows = reset_shape(db, args.name)
    except ConfigError:
        raise
    except ReplicaError as exc:
        print(f"replica: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"replica: {args.name} will resync from scratch on the next run; its {rows} rows stay visible until then")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from replica.cli.demo import run_demo

    if args.writes:
        return run_demo(args.db, writes=True)
    if not args.postgres:
        return run_demo(args.db)
    try:
        from replica.testing.postgres.cluster import PgClusterError

        return run_demo(args.db, postgres=True)
    except ImportError as exc:  # psycopg: pip install -e '.[postgres]' (scripts/demo --postgres does)
        print(f"replica: error: --postgres needs the postgres extra: {exc}", file=sys.stderr)
    except PgClusterError as exc:
        print(f"replica: error: could not start a throwaway Postgres: {exc}", file=sys.stderr)
    return EXIT_FATAL


async def _run_until_signal(replica: Replica, once: bool, timeout: float | None = None) -> bool:
    """Run until done (``once``), signalled or failed: True; False if ``timeout`` seconds passed first."""
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()  # the in-flight commit finishes in its thread (R6)
                    return

        tg.start_soon(watch_signals)
        with anyio.move_on_after(timeout) as deadline:  # cancels the run: a commit in flight finishes (R6)
            try:
                await replica.run(once=once)
            except ShapeError:
                pass  # already logged; the caller reads the shapes' states
        tg.cancel_scope.cancel()
    return not deadline.cancelled_caught


if __name__ == "__main__":
    sys.exit(main())
