"""One fleet process: several independent replicas (a database each) syncing the same shapes.

    python scripts/fleet/client.py URL --db a.db --db b.db --table t1 --table t2 [--no-group]

Each ``--db`` is its own ``Replica`` (its own HTTP client, store and follow loops), run inline in
this one process: the fleet's N clients fit a 2-core machine as a few processes of several replicas
each, and to the proxy and origin every replica is still a client of its own. Prints one JSON line
per published commit on stdout — ``{"db": i, "table": name, "lsn": L, "rows": n, "refetch": b,
"at": unix time}`` — which the harness reads for change → visible latency; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

import anyio

from replica import Replica, Shape
from replica.store.publish import Applied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--db", action="append", required=True, help="a database (one replica each); repeatable")
    parser.add_argument("--table", action="append", required=True, help="a shape (its table); repeatable")
    parser.add_argument("--no-group", action="store_true", help="publish each shape on its own (no R11 group)")
    parser.add_argument("--live", choices=["long-poll", "sse"], default="long-poll", help="how live changes arrive")
    parser.add_argument("--first", type=int, default=0, help="number of the first --db in the output lines")
    args = parser.parse_args(argv)
    anyio.run(_run, args)
    return 0


async def _run(args: argparse.Namespace) -> None:
    shapes = [Shape(table, group=None) if args.no_group else Shape(table) for table in args.table]

    def reporter(index: int) -> object:
        def report(applied: Applied) -> None:
            if applied.published:
                line = {"db": index, "table": applied.name, "lsn": applied.lsn, "rows": applied.rows,
                        "refetch": applied.refetch, "at": time.time()}
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
        return report

    replicas = [Replica(db, args.url, shapes, process="inline", live=args.live, on_commit=reporter(args.first + i))  # type: ignore[arg-type]
                for i, db in enumerate(args.db)]
    async with anyio.create_task_group() as tg:
        for replica in replicas:
            tg.start_soon(replica.run)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                return


if __name__ == "__main__":
    sys.exit(main())
