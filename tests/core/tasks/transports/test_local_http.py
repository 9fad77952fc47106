"""The dispatcher's response reader: a response read in one piece and one read byte by byte agree."""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from core.tasks.transports.local.http import Connection

RESPONSES = {
    "200 keep-alive": (b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nok", 200, True),
    "200 close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, False),
    "200 mixed case": (b"HTTP/1.1 200 OK\r\nCONNECTION: Close\r\ncontent-length:  0\r\n\r\n", 200, False),
    "200 chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, True),
    "201": (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 201, True),
    "500 with body": (b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom", 500, True),
    "1.0 keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 200, True),
    "1.0 default": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, False),
    "interim then 200": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, True),
}


@pytest.fixture
def connection() -> Iterator[Connection]:
    sock = socket.socket()
    try:
        yield Connection(sock)
    finally:
        sock.close()


def _feed(conn: Connection, pieces: list[bytes]) -> list[bool]:
    return [conn.feed(piece) for piece in pieces]


@pytest.mark.parametrize("response, status, keep_alive", list(RESPONSES.values()), ids=list(RESPONSES))
@pytest.mark.parametrize("split", ["whole", "bytes", "head-then-body"])
def test_a_response_completes_once_whatever_the_pieces(
    connection: Connection, response: bytes, status: int, keep_alive: bool, split: str
) -> None:
    if split == "whole":
        pieces = [response]
    elif split == "bytes":
        pieces = [response[i : i + 1] for i in range(len(response))]
    else:
        cut = response.rindex(b"\r\n\r\n") + 4 - 1
        pieces = [response[:cut], response[cut:]]
    done = _feed(connection, pieces)
    assert done[-1] and not any(done[:-1])
    assert (connection.status, connection.keep_alive) == (status, keep_alive)
    assert connection.body == (response.rsplit(b"\r\n\r\n", 1)[1] if status >= 300 else b"")


def test_a_200_whose_body_comes_later_is_not_complete_early(connection: Connection) -> None:
    assert not connection.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell")  # one byte short
    assert connection.feed(b"o")


def test_garbage_is_refused(connection: Connection) -> None:
    with pytest.raises(ValueError):
        connection.feed(b"SSH-2.0-OpenSSH\r\n\r\n")
