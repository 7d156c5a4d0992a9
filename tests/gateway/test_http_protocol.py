"""The gateway's HTTP protocol: what one turn of the event loop writes goes out as one send."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from gateway.http_protocol import CoalescingTransport
from tests.fixtures.stack import API_KEY


class Recording(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data):
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True
        self.events.append("close")

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


async def test_writes_of_one_turn_are_joined_and_later_writes_go_on_their_own_turn():
    raw = Recording()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.write(b"first chunk")
    assert raw.writes == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nfirst chunk")
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nfirst chunk"]
    transport.write(b"second chunk")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"second chunk"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5)


async def test_closing_sends_what_is_held_first_and_nothing_is_written_to_a_closing_socket():
    raw = Recording()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert raw.events == ["write", "close"] and raw.writes == [b"last words"]
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert raw.writes == [b"last words"]


def _data_segments_received(sock: socket.socket) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info (offset 152 since Linux 4.6)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 152)[0]


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="reads Linux's TCP_INFO")
def test_an_answer_reaches_the_client_as_one_segment_not_headers_then_body(stack):
    host, port = stack.url.removeprefix("http://").split(":")
    request = (f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
        assert json.loads(body)["object"] == "list"
        assert _data_segments_received(sock) == 1
