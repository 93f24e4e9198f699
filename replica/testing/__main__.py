"""``python -m replica.testing serve``: run the sample FakeElectric on a loopback port.

Prints exactly one line, the shape URL (``http://HOST:PORT/v1/shape``), once the socket is
listening, and exits 0 on SIGTERM or SIGINT. Made for test harnesses in other languages
(e.g. the official TypeScript client) that need a server in a subprocess. With
``--postgres DSN`` it serves the tables of a real Postgres database instead (``pgserver.py``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack

import anyio

from replica.testing.fake.sample import sample_fake
from replica.testing.fake.service import ShapeService
from replica.testing.server import serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replica.testing",
        description="FakeElectric: a protocol-faithful fake of ElectricSQL's /v1/shape API, for tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "serve",
        help="serve the sample dataset (table public.items), or a Postgres database, over HTTP",
        description=(
            "Serve the sample dataset (public.items) until SIGTERM/SIGINT. Prints the shape URL "
            "on stdout once the server accepts connections, then nothing else. With --postgres, "
            "serve the tables of that Postgres database instead (changes through logical decoding; "
            "needs wal_level=logical). For development and tests only: not a production "
            "replacement for Electric."
        ),
    )
    run.add_argument(
        "--postgres",
        metavar="DSN",
        default=None,
        help="serve this Postgres database's tables (e.g. 'host=127.0.0.1 dbname=app user=postgres'); "
        "a development/test server, not a production replacement for Electric (--rows and --seed do not apply)",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    run.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: %(default)s)")
    run.add_argument("--rows", type=_non_negative, default=1000, help="rows in public.items (default: %(default)s)")
    run.add_argument(
        "--chunk-bytes",
        type=_positive,
        default=10 * 1024 * 1024,
        help="approximate response chunk size in bytes, as ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD (default: %(default)s)",
    )
    run.add_argument(
        "--long-poll-timeout",
        type=float,
        default=20.0,
        help="seconds a live request is held without changes (default: %(default)s)",
    )
    run.add_argument("--secret", default=None, help="require this secret (?secret=…) like ELECTRIC_SECRET (default: none)")
    run.add_argument("--seed", type=int, default=0, help="seed for the dataset and the server's randomness (default: 0)")
    run.add_argument("--writes", action="store_true",
                     help="also serve POST /v1/writes: batches of local writes applied in one transaction each "
                     "(development and tests only; default: off)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


async def _serve(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        source: ShapeService
        if args.postgres is not None:
            from replica.testing.postgres.server import PostgresElectric  # needs psycopg: the postgres extra

            source = stack.enter_context(
                PostgresElectric(
                    args.postgres,
                    chunk_bytes=args.chunk_bytes,
                    long_poll_timeout=args.long_poll_timeout,
                    secret=args.secret,
                )
            )
        else:
            source = sample_fake(
                rows=args.rows,
                chunk_bytes=args.chunk_bytes,
                long_poll_timeout=args.long_poll_timeout,
                secret=args.secret,
                seed=args.seed,
            )
        if args.writes:
            source.enable_writes()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with serve(source, host=args.host, port=args.port) as server:
                print(server.url, flush=True)
                async for _ in signals:
                    return


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        anyio.run(_serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
