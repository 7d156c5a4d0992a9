"""uvicorn's httptools protocol, with the bytes of one turn of the event loop sent in one write.

Starlette sends a response as two ASGI messages (start, then body) and uvicorn writes each to the
socket at once: two sends, two segments, two wake-ups of the client for every small JSON answer. On
loopback each send costs ~0.3 ms here, as much as the rest of the gateway's work on a completion.
Holding the writes until the event loop's next turn joins the two without delaying anything: the
body is written in the same turn as the headers, and a streamed chunk that comes later still goes
out on the turn after it was written.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes made in one turn of the loop go to the socket as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()  # an asyncio transport sends what it holds before it closes; so do we
        self._transport.close()

    def __getattr__(self, name: str):
        """Everything else (reading, flow control, extra info, abort) is the socket transport's."""
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
