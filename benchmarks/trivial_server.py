"""An HTTP server that does nearly nothing: the yardstick for the load generator.

It answers every request with the same small 200 at once, so a run against it measures what
the generator itself can drive and what it costs in CPU. Loopback only.

``python -m benchmarks.trivial_server --port N``
"""

from __future__ import annotations

import argparse
import asyncio
import sys

try:  # pragma: no cover
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

BODY = b'{"success":true,"message":"ok","data":{"report_id":"x"}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Trivial(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            assert self.transport is not None
            self.transport.write(ANSWER)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Trivial, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="answer every request with a fixed 200")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
