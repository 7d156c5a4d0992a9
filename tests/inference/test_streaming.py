"""Streamed pieces from the generator's thread to the event loop (services/inference/streaming.py)."""

from __future__ import annotations

import asyncio
import threading

from services.inference.streaming import Mailbox, Pieces


def _on_another_thread(work) -> None:
    """Run `work` on a thread while the event loop is blocked here: nothing is delivered meanwhile."""
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


async def test_the_pieces_of_many_streams_arrive_in_order_with_one_wake_up_per_batch():
    loop = asyncio.get_running_loop()
    wake_ups = []
    real = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args, **kwargs: (wake_ups.append(args[0]), real(*args, **kwargs))[1]
    try:
        mailbox = Mailbox(loop)
        streams = [Pieces(mailbox) for _ in range(8)]

        def decoding_step(step: int):  # like the engine: one piece per row, one row per stream
            return lambda: [pieces.put(0, f"{step}.{row} ", []) for row, pieces in enumerate(streams)]

        for step in range(3):
            _on_another_thread(decoding_step(step))
            await asyncio.sleep(0)  # the loop runs what was posted
        assert len(wake_ups) == 3  # one per step, not one per piece
        for row, pieces in enumerate(streams):
            assert pieces.rest() == [(0, f"0.{row} 1.{row} 2.{row} ", [])]
    finally:
        del loop.call_soon_threadsafe


async def test_a_reader_gets_each_piece_and_stops_when_generation_ends():
    loop = asyncio.get_running_loop()
    pieces = Pieces(Mailbox(loop))
    generating = loop.create_future()

    def generate():
        for index in range(3):
            pieces.put(index % 2, f"piece {index}", [])
        loop.call_soon_threadsafe(generating.set_result, None)

    threading.Thread(target=generate).start()
    read = [piece async for piece in pieces.until(generating)] + pieces.rest()
    by_choice: dict[int, str] = {}
    for index, text, _tokens in read:
        by_choice[index] = by_choice.get(index, "") + text
    assert by_choice == {0: "piece 0piece 2", 1: "piece 1"}
