"""A loopback TCP forwarder the tests can cut and restore: storage that becomes unreachable
(connection errors, not HTTP errors) without stopping Azurite or losing its state."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`. `cut()` aborts every open
    connection and makes new ones be accepted and aborted at once (`refused` is set on the
    first such connection); `restore()` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refused = asyncio.Event()
        self._cut = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._abort_all()
        await self._server.wait_closed()

    def cut(self) -> None:
        self._cut = True
        self.refused.clear()
        self._abort_all()

    def restore(self) -> None:
        self._cut = False

    def _abort_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused.set()
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._open |= pair
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._open -= pair
            for side in pair:
                side.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()
