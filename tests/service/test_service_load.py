"""Concurrency over real HTTP: requests share batches, a full queue answers 503 + Retry-After at once, a
client that disconnects leaves no work behind, and SIGTERM under load still answers every accepted request."""

import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import encode, post_image, read_http_answer, real_pair, start_server


def _metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} ([\d.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _fire(url: str, pairs: list[tuple[bytes, bytes]], timeout: float = 120.0) -> list[httpx.Response]:
    """Send every pair at once, one thread and one connection each."""
    with ThreadPoolExecutor(len(pairs)) as pool:
        return list(pool.map(lambda p: post_image(url, *p, timeout=timeout), pairs))


@pytest.fixture(scope="module")
def batching():
    """Batches of up to 8 that wait up to 200 ms to fill; at most 4 requests in flight."""
    handle = start_server({"S2CRNET_MAX_BATCH_SIZE": "8", "S2CRNET_MAX_DELAY_MS": "200",
                           "S2CRNET_MAX_QUEUE": "4"})
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[bytes, bytes]]:
    made = [real_pair(320, 240, i) for i in range(8)]
    return [(encode(c, "JPEG", quality=90), encode(m, "PNG")) for c, m in made]


def test_concurrent_requests_share_a_forward_pass(batching, pairs):
    responses = _fire(batching.url, pairs[:4])
    assert [r.status_code for r in responses] == [200] * 4
    batches = _metric(batching.url, "s2crnet_batch_size_count")
    images = _metric(batching.url, "s2crnet_batch_size_sum")
    assert images == 4 and batches < images  # at least one batch held more than one image
    assert _metric(batching.url, "s2crnet_batch_size_bucket", '{le="1.0"}') < batches


def test_full_queue_answers_503_with_retry_after_at_once(batching, pairs):
    responses = _fire(batching.url, pairs * 2)  # 16 at once against max_queue 4
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["code"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1
    assert _metric(batching.url, "s2crnet_in_flight_requests") == 0
    assert _metric(batching.url, "s2crnet_queue_depth") == 0


def test_client_that_disconnects_leaves_no_work_behind(batching):
    composite, mask = real_pair(4096, 4096, 5)
    files = {"composite": ("c.jpg", encode(composite, "JPEG", quality=90)),
             "mask": ("m.png", encode(mask, "PNG"))}
    request = httpx.Request("POST", batching.url + "/harmonize", files=files)
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    decodes = _metric(batching.url, "s2crnet_stage_duration_seconds_count", '{stage="decode"}')
    encodes = _metric(batching.url, "s2crnet_stage_duration_seconds_count", '{stage="encode"}')
    host, port = batching.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /harmonize HTTP/1.1\r\n{head}\r\n".encode() + body)
        deadline = time.monotonic() + 60
        while _metric(batching.url, "s2crnet_stage_duration_seconds_count", '{stage="decode"}') == decodes:
            assert time.monotonic() < deadline, "the server never decoded the upload"
            time.sleep(0.005)
    # the socket is closed while the request is between decode and encode
    deadline = time.monotonic() + 30
    while _metric(batching.url, "s2crnet_in_flight_requests") != 0:
        assert time.monotonic() < deadline, "the abandoned request never left"
        time.sleep(0.05)
    assert _metric(batching.url, "s2crnet_requests_total", '{endpoint="/harmonize",status="499"}') >= 1
    assert _metric(batching.url, "s2crnet_stage_duration_seconds_count", '{stage="encode"}') == encodes
    assert httpx.get(batching.url + "/healthz").status_code == 200


def test_sigterm_under_load_answers_every_accepted_request():
    handle = start_server({"S2CRNET_DRAIN_TIMEOUT_S": "60"})
    try:
        # One upload held half-sent: admitted (in flight) before SIGTERM however fast the machine answers the rest.
        held_composite, held_mask = real_pair(1024, 768, 99)
        held = httpx.Request("POST", handle.url + "/harmonize", files={
            "composite": ("c.jpg", encode(held_composite, "JPEG", quality=90)),
            "mask": ("m.png", encode(held_mask, "PNG"))})
        held_body = held.read()
        held_head = "".join(f"{k}: {v}\r\n" for k, v in held.headers.items())
        host, port = handle.url.removeprefix("http://").split(":")
        held_sock = socket.create_connection((host, int(port)))
        held_sock.sendall(f"POST /harmonize HTTP/1.1\r\n{held_head}\r\n".encode() + held_body[:1000])
        made = [real_pair(1024, 768, i) for i in range(16)]
        pairs = [(encode(c, "JPEG", quality=90), encode(m, "PNG")) for c, m in made]
        answered: list[httpx.Response] = []
        lock = threading.Lock()

        def send(pair):
            response = post_image(handle.url, *pair, timeout=120)
            with lock:
                answered.append(response)

        threads = [threading.Thread(target=send, args=(p,)) for p in pairs]
        for thread in threads:
            thread.start()
        # SIGTERM once every request not yet answered, and the held one, is accepted (counted in flight)
        deadline = time.monotonic() + 60
        while (in_flight := _metric(handle.url, "s2crnet_in_flight_requests")) + len(answered) < len(pairs) + 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        handle.signal(signal.SIGTERM)  # at once: a second /metrics read here could come after the last answer
        # while it drains: still listening, not ready, refusing new work
        ready = httpx.get(handle.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["code"] == "shutting_down"
        late = post_image(handle.url, *pairs[0], timeout=30)
        assert late.status_code == 503 and late.json()["code"] == "shutting_down"
        held_sock.sendall(held_body[1000:])
        held_answer = read_http_answer(held_sock)
        held_sock.close()
        for thread in threads:
            thread.join(120)
        assert handle.wait(60) == 0
        assert held_answer.startswith(b"HTTP/1.1 200")
        assert in_flight >= 1
        assert sorted(r.status_code for r in answered) == [200] * len(pairs)
        assert "draining" in handle.logs
    finally:
        if handle.running:
            handle.process.kill()
