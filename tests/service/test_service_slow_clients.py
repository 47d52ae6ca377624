"""Slow and idle clients cannot hold connections: a deadline on the request head, a cap on open connections.

Real server on 127.0.0.1, raw sockets, a bounded number of clients (issue 19, item 4).
"""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import read_http_answer, start_server

HEAD_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def guarded():
    handle = start_server({"S2CRNET_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
                           "S2CRNET_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "S2CRNET_REQUEST_TIMEOUT_S": "30"})
    yield handle
    handle.stop()


def _connect(handle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", handle.port), timeout=10)


def _json_body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def _trickle_head(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Send a request head one line every 0.5 s for up to `seconds`; → (what came back, when it was closed)."""
    started = time.monotonic()
    lines = [b"POST /harmonize HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(100)]
    sock.settimeout(0.5)
    answer = b""
    for line in lines:
        if time.monotonic() - started > seconds:
            break
        try:
            sock.sendall(line)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: the server closed it
            break
        if not data:
            break
        answer += data
    return answer + read_http_answer(sock, timeout=1), time.monotonic() - started


def test_slow_request_heads_are_cut_off(guarded):
    sockets = [_connect(guarded) for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(sockets)) as pool:
            outcomes = list(pool.map(lambda sock: _trickle_head(sock, seconds=5 * HEAD_TIMEOUT_S), sockets))
    finally:
        for sock in sockets:
            sock.close()
    for answer, seconds in outcomes:
        # the first line every 0.5 s keeps it busy; the deadline is from its first byte, not the last
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert _json_body(answer)["code"] == "header_timeout"
        assert seconds < 3 * HEAD_TIMEOUT_S, seconds
    assert httpx.get(guarded.url + "/healthz", timeout=10).status_code == 200


def test_a_silent_connection_is_closed(guarded):
    with _connect(guarded) as sock:
        started = time.monotonic()
        sock.settimeout(5 * HEAD_TIMEOUT_S)
        assert sock.recv(1024) == b""  # closed without a word: it never began a request
        assert time.monotonic() - started < 3 * HEAD_TIMEOUT_S


def test_connections_past_the_cap_are_refused_at_once(guarded):
    held = [_connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # the server has accepted them all
        started = time.monotonic()
        with _connect(guarded) as extra:
            answer = read_http_answer(extra, timeout=HEAD_TIMEOUT_S / 2)
        assert time.monotonic() - started < HEAD_TIMEOUT_S / 2, "refused only when the others timed out"
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after:" in answer.lower() and _json_body(answer)["code"] == "overloaded"
        refused = httpx.get(guarded.url + "/healthz", timeout=5)
        assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the slots come back once the held connections are gone
        if httpx.get(guarded.url + "/healthz", timeout=5).status_code == 200:
            break
        time.sleep(0.1)
    assert httpx.get(guarded.url + "/healthz", timeout=5).status_code == 200
