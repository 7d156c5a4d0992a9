"""Streamed text from the generator's thread to the event loop that sends it.

The engine (or a remote backend) calls `put` from its own thread as each choice's text is decided;
the servicer reads the pieces in the event loop. A reader that lags gets what came meanwhile as one
piece per choice, so a slow client costs fewer, larger messages rather than a growing queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.inference.decoding import GeneratedToken

# (choice index, text, the tokens generated since the choice's previous piece)
Piece = tuple[int, str, list[GeneratedToken]]


class Pieces:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[Piece] = asyncio.Queue()

    def put(self, index: int, text: str, tokens: list[GeneratedToken]) -> None:
        """Called from the generator's thread; must be quick."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, text, tokens))

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
