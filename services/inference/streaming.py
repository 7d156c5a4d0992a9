"""Streamed text from the generator's thread to the event loop that sends it.

The engine (or a remote backend) calls `put` from its own thread as each choice's text is decided;
the servicer reads the pieces in the event loop. A reader that lags gets what came meanwhile as one
piece per choice, so a slow client costs fewer, larger messages rather than a growing queue.

The pieces of every stream of one event loop go through one mailbox, which wakes the loop once
for whatever was posted before it ran: a decoding step hands over one piece per row, and each
wake-up of the loop's thread takes a core from the engine's two compute threads for a moment
(on a CPU the engine's parallel regions then wait for the one that lost its core), so 8 streams
cost one wake-up per step instead of 8.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

from services.inference.decoding import GeneratedToken

# (choice index, text, the tokens generated since the choice's previous piece)
Piece = tuple[int, str, list[GeneratedToken]]


class Mailbox:
    """Pieces posted from other threads for the streams of one event loop, delivered in batches:
    one per event loop (the servicer's), shared by all its streams' `Pieces`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._posted: deque[tuple[asyncio.Queue, Piece]] = deque()
        self._wake_pending = False

    def post(self, queue: asyncio.Queue, piece: Piece) -> None:
        with self._lock:
            self._posted.append((queue, piece))
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            posted, self._posted = self._posted, deque()
            self._wake_pending = False
        for queue, piece in posted:
            queue.put_nowait(piece)


class Pieces:
    """One stream's pieces, posted through its event loop's `mailbox`."""

    def __init__(self, mailbox: Mailbox):
        self._mailbox = mailbox
        self._queue: asyncio.Queue[Piece] = asyncio.Queue()

    def put(self, index: int, text: str, tokens: list[GeneratedToken]) -> None:
        """Called from the generator's thread; must be quick."""
        self._mailbox.post(self._queue, (index, text, tokens))

    async def until(self, generating: asyncio.Future) -> AsyncIterator[Piece]:
        """The pieces as they come, until `generating` is done (the pieces still queued then: `rest`)."""
        while not generating.done():
            waiting = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({waiting, generating}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                for piece in self._merged([waiting.result()]):
                    yield piece
            else:
                waiting.cancel()

    def rest(self) -> list[Piece]:
        """The pieces queued and not read yet, one per choice."""
        return self._merged([])

    def _merged(self, first: list[Piece]) -> list[Piece]:
        while not self._queue.empty():
            first.append(self._queue.get_nowait())
        merged: dict[int, Piece] = {}
        for index, text, tokens in first:
            _, text_before, tokens_before = merged.get(index, (index, "", []))
            merged[index] = (index, text_before + text, tokens_before + tokens)
        return list(merged.values())
