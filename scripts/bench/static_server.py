"""A tiny loopback HTTP/1.1 server for pre-encoded Electric responses (see data.py).

    python scripts/bench/static_server.py FOLDER [FOLDER...]   # prints the shape URL, serves until killed

Answers GET /v1/shape?table=T&offset=O… with the response recorded for (T, O): headers as
recorded, the body read from disk (sendfile). Live requests are held 20 s and answered
up-to-date, like a quiet Electric. No per-request work beyond a dict lookup, so the client is
what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROUTES: dict[tuple[str, str], tuple[bytes, Path, int]] = {}


def load(folder: Path) -> None:
    index = json.loads((folder / "index.json").read_text())
    for offset, entry in index["responses"].items():
        path = folder / entry["body"]
        size = path.stat().st_size
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in entry["headers"].items())
        head += f"content-length: {size}\r\naccess-control-allow-origin: *\r\n\r\n"
        ROUTES[(index["dataset"], offset)] = (head.encode("latin-1"), path, size)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            _method, target, _version = line.split(" ", 2)
            query = dict(parse_qsl(urlsplit(target).query))
            table = query.get("table", "").split(".")[-1].strip('"')
            if query.get("live") == "true":
                await asyncio.sleep(20)
                body = b'[{"headers":{"control":"up-to-date"}}]'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nelectric-up-to-date: \r\n"
                    + f"electric-handle: {query.get('handle', '')}\r\nelectric-offset: {query.get('offset')}\r\n".encode()
                    + b"electric-cursor: 1001\r\naccess-control-allow-origin: *\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                continue
            route = ROUTES.get((table, query.get("offset", "")))
            if route is None:
                body = b'{"message":"not recorded"}'
                writer.write(f"HTTP/1.1 404 Not Found\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                continue
            header, path, _size = route
            writer.write(header)
            with open(path, "rb") as file:
                await loop.sendfile(writer.transport, file)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    for folder in sys.argv[1:]:
        load(Path(folder))
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1/shape", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    os.nice(0)
    asyncio.run(main())
