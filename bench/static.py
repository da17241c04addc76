"""The static limit: a trivial HTTP/1.1 server that sends files with ``loop.sendfile``.

``GET /series`` answers one multipart/related body with every listed file as an
``application/dicom`` part — what a WADO-RS series retrieve returns, with zero-copy
sends and no index, so it shows how fast this machine and client can move the bytes.
``GET /health`` answers ``ok``.  Run: ``python -m bench.static --port P --files LIST``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

BOUNDARY = "bench-static-boundary-7d1e0c"


def _part_header() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode()


class Files:
    """The files of the series and the length of their multipart body."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.sizes = [p.stat().st_size for p in paths]
        header = len(_part_header())
        closing = len(f"--{BOUNDARY}--\r\n")
        self.body_length = sum(header + s + 2 for s in self.sizes) + closing


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bool] | None:
    """The request path and whether the client wants keep-alive; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    path = parts[1] if len(parts) > 1 else "/"
    close = any(
        line.lower().startswith("connection:") and "close" in line.lower() for line in lines
    )
    return path, not close


async def _handle(files: Files, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    try:
        while (req := await _read_request(reader)) is not None:
            path, keep_alive = req
            if path == "/series":
                writer.write(
                    (
                        "HTTP/1.1 200 OK\r\n"
                        f'Content-Type: multipart/related; type="application/dicom"; '
                        f"boundary={BOUNDARY}\r\n"
                        f"Content-Length: {files.body_length}\r\n\r\n"
                    ).encode()
                )
                for p in files.paths:
                    writer.write(_part_header())
                    await writer.drain()
                    with open(p, "rb") as fh:
                        await loop.sendfile(writer.transport, fh)
                    writer.write(b"\r\n")
                writer.write(f"--{BOUNDARY}--\r\n".encode())
            else:
                body = b"ok" if path == "/health" else b"not found"
                status = "200 OK" if path == "/health" else "404 Not Found"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
            if not keep_alive:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(port: int, paths: list[Path]) -> None:
    """Serve until cancelled."""
    files = Files(paths)
    server = await asyncio.start_server(
        lambda r, w: _handle(files, r, w), "127.0.0.1", port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--files", type=Path, required=True, help="text file, one path a line")
    args = parser.parse_args()
    paths = [Path(line) for line in args.files.read_text().splitlines() if line.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, paths))


if __name__ == "__main__":
    main()
