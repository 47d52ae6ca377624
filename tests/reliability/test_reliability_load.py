"""Overload, faults and soak against the real server over HTTP on 127.0.0.1.

- Overload: the sustainable throughput is measured first (closed loop at max_queue clients), then requests
  arrive at 4× that rate for a bounded time: every one ends 200, 503 + Retry-After or 504; none is lost; the
  p95 of the 200s stays within 3× the unloaded p95; /metrics never shows more than max_queue queued or in flight.
- Clients that vanish mid-upload and mid-response leave nothing in flight.
- Soak: mixed requests (64² to 4096², sequential and concurrent): RSS growth after warm-up ≤ 50 MB, no file
  descriptors or threads leaked (psutil on the server's pid).
- SIGTERM with ≥ 16 requests in flight (full run; tests/service/test_service_load.py checks the same drain with
  fewer guaranteed in flight in the normal run).

    nice -n 15 .venv/bin/pytest -q tests/reliability/test_reliability_load.py  # fast, short bounded load
    nice -n 15 .venv/bin/pytest -q -m slow tests/reliability/test_reliability_load.py  # full: 30 s overload, 5,000 soak
"""

import http.client
import json
import random
import signal
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx
import psutil
import pytest
from helpers import encode, post_image, real_pair, start_server
from prometheus_client.parser import text_string_to_metric_families

OVERLOAD_QUEUE = 2  # small, so a request admitted under overload waits behind few others (see docs/RELIABILITY.md)
OVERLOAD_FACTOR = 4
P95_FACTOR = 3
RSS_GROWTH_MB = 50


def gauges(url: str) -> dict[str, float]:
    """Every unlabelled sample of /metrics, by name."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def internal_errors(url: str) -> float:
    """How many answers the server counted as 500 (a bug: no client may cause one)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "s2crnet_requests_total" and sample.labels.get("status") == "500")


def wait_until_idle(url: str, timeout: float = 30) -> None:
    """In flight and queue depth back to 0 within `timeout` seconds, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        values = gauges(url)
        if values["s2crnet_in_flight_requests"] == 0 and values["s2crnet_queue_depth"] == 0:
            return
        assert time.monotonic() < deadline, f"work left behind: {values['s2crnet_in_flight_requests']} in flight"
        time.sleep(0.05)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def pairs_at(width: int, height: int, count: int) -> list[tuple[bytes, bytes]]:
    made = [real_pair(width, height, i) for i in range(count)]
    return [(encode(c, "JPEG", quality=90), encode(m, "PNG")) for c, m in made]


# --- overload -------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: int  # 0: no answer (client timeout or connection error): a lost request
    seconds: float
    retry_after: str | None = None
    code: str | None = None


@dataclass
class Watch:
    """Samples /metrics in a thread: the highest queue depth and in-flight count seen."""

    url: str
    most_queued: float = 0
    most_in_flight: float = 0
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.1):  # 10 scrapes a second: each one costs the server a little CPU
            values = gauges(self.url)
            self.most_queued = max(self.most_queued, values["s2crnet_queue_depth"])
            self.most_in_flight = max(self.most_in_flight, values["s2crnet_in_flight_requests"])
            self.samples += 1


class LeanClient:
    """A lean load generator: http.client keep-alive connections (one per thread) and bodies encoded once, so
    the shared cores go to the server rather than to the client."""

    def __init__(self, url: str, pairs: list[tuple[bytes, bytes]], timeout: float):
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.timeout = int(port), timeout
        self.bodies = []
        for composite, mask in pairs:
            request = httpx.Request("POST", url + "/harmonize", files={"composite": ("c.jpg", composite),
                                                                        "mask": ("m.png", mask)})
            self.bodies.append((request.read(), request.headers["content-type"]))
        self.local = threading.local()

    def post(self, index: int) -> Outcome:
        body, content_type = self.bodies[index % len(self.bodies)]
        start = time.perf_counter()
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(self.host, self.port, self.timeout)
        try:
            connection.request("POST", "/harmonize", body, {"Content-Type": content_type})
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self.local.connection = None
            return Outcome(0, time.perf_counter() - start)
        if response.getheader("connection", "") == "close":
            connection.close()
            self.local.connection = None
        code = json.loads(answer).get("code") if response.status != 200 else None
        return Outcome(response.status, time.perf_counter() - start, response.getheader("retry-after"), code)


def run_overload(unloaded_requests: int, measure_s: float, overload_s: float, record_property) -> dict:
    handle = start_server({"S2CRNET_MAX_QUEUE": str(OVERLOAD_QUEUE), "S2CRNET_LOG_LEVEL": "warning"})
    pairs = pairs_at(2048, 1536, 4)
    server_process, this_process = psutil.Process(handle.process.pid), psutil.Process()
    timeout = 60.0  # the server's deadline is 30 s: past 60 s a request counts as hung
    client = LeanClient(handle.url, pairs, timeout)
    try:
        # 1. unloaded: one at a time
        unloaded = [client.post(i) for i in range(unloaded_requests)]
        assert all(o.status == 200 for o in unloaded)
        unloaded_p95 = p95([o.seconds for o in unloaded])
        # 2. sustainable throughput: max_queue clients in a closed loop for measure_s
        done: list[Outcome] = []
        start = time.perf_counter()

        def closed_loop(index: int) -> None:
            while time.perf_counter() - start < measure_s:
                done.append(client.post(index))

        with ThreadPoolExecutor(OVERLOAD_QUEUE) as pool:
            list(pool.map(closed_loop, range(OVERLOAD_QUEUE)))
        sustained = sum(o.status == 200 for o in done) / (time.perf_counter() - start)
        assert sustained > 0
        # 3. open loop at OVERLOAD_FACTOR × that rate for overload_s
        rate = OVERLOAD_FACTOR * sustained
        total = max(1, round(rate * overload_s))
        watch = Watch(handle.url)
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        futures = []
        server_cpu, client_cpu = sum(server_process.cpu_times()[:2]), sum(this_process.cpu_times()[:2])
        with ThreadPoolExecutor(16) as pool:  # 503s come back at once, so 16 senders keep up with the rate
            start = time.perf_counter()
            for i in range(total):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                futures.append(pool.submit(client.post, i))
            offered_s = time.perf_counter() - start
            wait(futures, timeout=timeout + 30)
        server_cpu = sum(server_process.cpu_times()[:2]) - server_cpu
        client_cpu = sum(this_process.cpu_times()[:2]) - client_cpu
        watch.stop.set()
        watcher.join(10)
        outcomes = [f.result() for f in futures if f.done()]
        wait_until_idle(handle.url)
        assert httpx.get(handle.url + "/healthz", timeout=10).status_code == 200
    finally:
        handle.stop()
    counts: dict[int, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    ok_p95 = p95([o.seconds for o in outcomes if o.status == 200]) if counts.get(200) else float("nan")
    figures = {"unloaded_p95_ms": round(unloaded_p95 * 1000, 1), "sustained_rps": round(sustained, 2),
               "offered_rps": round(total / offered_s, 2), "requests": total, "statuses": counts,
               "lost": total - len(outcomes) + counts.get(0, 0), "p95_200_ms": round(ok_p95 * 1000, 1),
               "p95_ratio": round(ok_p95 / unloaded_p95, 2), "most_queued": watch.most_queued,
               "most_in_flight": watch.most_in_flight, "metric_samples": watch.samples,
               "server_cpu_s": round(server_cpu, 1), "client_cpu_s": round(client_cpu, 1)}
    for key, value in figures.items():
        record_property(f"overload_{key}", value)
    assert figures["lost"] == 0, figures
    assert set(counts) <= {200, 503, 504}, figures
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in outcomes if o.status == 503)
    assert all(o.code in ("overloaded", "timeout") for o in outcomes if o.status != 200)
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0, figures  # it was overloaded, and still served
    assert figures["offered_rps"] >= 0.9 * rate, figures  # the client kept up with the rate it meant to offer
    assert ok_p95 <= P95_FACTOR * unloaded_p95, figures
    assert watch.samples > 0 and watch.most_queued <= OVERLOAD_QUEUE and watch.most_in_flight <= OVERLOAD_QUEUE
    return figures


def test_overload_fast(record_property):
    run_overload(unloaded_requests=30, measure_s=3, overload_s=5, record_property=record_property)


@pytest.mark.slow
def test_overload_full(record_property):
    run_overload(unloaded_requests=60, measure_s=10, overload_s=30, record_property=record_property)


# --- clients that vanish ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server_for_faults():
    handle = start_server({"S2CRNET_LOG_LEVEL": "warning"})
    yield handle
    handle.stop()


def _raw_post(url: str, composite: bytes, mask: bytes, fields: dict | None = None) -> tuple[bytes, bytes]:
    """The request head and body that httpx would send for this upload."""
    request = httpx.Request("POST", url + "/harmonize", files={"composite": ("c.jpg", composite),
                                                                "mask": ("m.png", mask)}, data=fields or {})
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    return f"POST /harmonize HTTP/1.1\r\n{head}\r\n".encode(), body


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def test_client_gone_mid_upload_leaves_nothing_in_flight(server_for_faults):
    url = server_for_faults.url
    head, body = _raw_post(url, *pairs_at(1024, 768, 1)[0])
    for cut in (0, 1, len(body) // 3, len(body) - 1):  # the head only, then ever more of the body
        with _connect(url) as sock:
            sock.sendall(head + body[:cut])
            deadline = time.monotonic() + 10
            while gauges(url)["s2crnet_in_flight_requests"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # admitted: counted in flight while the upload hangs
            assert gauges(url)["s2crnet_in_flight_requests"] == 1
        wait_until_idle(url, timeout=10)
    assert httpx.get(url + "/healthz").status_code == 200
    assert internal_errors(url) == 0, server_for_faults.logs[-3000:]


def test_client_gone_mid_response_leaves_nothing_in_flight(server_for_faults):
    url = server_for_faults.url
    head, body = _raw_post(url, *pairs_at(2048, 2048, 1)[0], fields={"format": "png"})  # a ~10 MB answer
    for _ in range(3):
        with _connect(url) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so the server cannot send it all at once
            sock.sendall(head + body)
            first = sock.recv(1024)
            assert first.startswith(b"HTTP/1.1 200"), first[:200]
        wait_until_idle(url, timeout=30)
    assert httpx.get(url + "/healthz").status_code == 200
    assert internal_errors(url) == 0, server_for_faults.logs[-3000:]
    assert post_image(url, *pairs_at(320, 240, 1)[0]).status_code == 200


# --- soak -------------------------------------------------------------------------------------------------------
SOAK_SIDES = {64: 25, 128: 20, 256: 20, 512: 15, 1024: 12, 2048: 6, 4096: 2}  # side → weight


def _server_usage(process: psutil.Process) -> dict[str, float]:
    return {"rss_mb": process.memory_info().rss / 2**20, "fds": process.num_fds(), "threads": process.num_threads()}


def run_soak(total: int, warm_up: int, largest: int, record_property) -> dict:
    """`total` mixed requests in rounds of 20, alternately one at a time and 4 at once; usage is measured after
    the first `warm_up` (the allocator's per-thread arenas grow for the first few hundred, then stay level)."""
    handle = start_server({"S2CRNET_LOG_LEVEL": "warning"})
    process = psutil.Process(handle.process.pid)
    sides = [s for s in SOAK_SIDES if s <= largest]
    inputs = {side: pairs_at(side, side, 2) for side in sides}
    chooser = random.Random(7)
    plan = [side for side in sides for _ in range(2)]  # warm-up: every size, twice, first
    plan += chooser.choices(sides, weights=[SOAK_SIDES[s] for s in sides], k=total - len(plan))
    statuses: dict[int, int] = {}
    peak_rss = 0.0

    def one(index: int, client: httpx.Client) -> int:
        side = plan[index]
        endpoint = "/curves" if index % 5 == 4 else "/harmonize"
        fields = {"format": chooser.choice(["jpeg", "png", "webp"])} if side <= 512 and index % 5 != 4 else {}
        pair = inputs[side][index % 2]
        try:
            return post_image(handle.url, *pair, fields=fields, endpoint=endpoint, client=client, timeout=120
                              ).status_code
        except httpx.HTTPError:
            return 0

    def rounds(first: int, last: int) -> None:
        nonlocal peak_rss
        with httpx.Client() as client, ThreadPoolExecutor(4) as pool:
            for start in range(first, last, 20):
                indices = range(start, min(start + 20, last))
                if (start // 20) % 2:
                    results = list(pool.map(lambda i: one(i, client), indices))
                else:
                    results = [one(i, client) for i in indices]
                for status in results:
                    statuses[status] = statuses.get(status, 0) + 1
                peak_rss = max(peak_rss, process.memory_info().rss / 2**20)

    def settled_usage() -> dict[str, float]:
        wait_until_idle(handle.url)
        time.sleep(1.0)  # the server closes the finished keep-alive connections
        return _server_usage(process)

    try:
        started = time.perf_counter()
        rounds(0, warm_up)
        after_warm_up = settled_usage()
        rounds(warm_up, total)
        at_end = settled_usage()
        seconds = time.perf_counter() - started
        assert httpx.get(handle.url + "/healthz", timeout=10).status_code == 200
    finally:
        handle.stop()
    figures = {"requests": total, "warm_up": warm_up, "largest_side": largest, "statuses": statuses,
               "seconds": round(seconds, 1),
               "rss_after_warm_up_mb": round(after_warm_up["rss_mb"], 1), "rss_end_mb": round(at_end["rss_mb"], 1),
               "rss_growth_mb": round(at_end["rss_mb"] - after_warm_up["rss_mb"], 1),
               "peak_rss_mb": round(peak_rss, 1), "fds": f"{after_warm_up['fds']} → {at_end['fds']}",
               "threads": f"{after_warm_up['threads']} → {at_end['threads']}"}
    for key, value in figures.items():
        record_property(f"soak_{key}", value)
    assert statuses == {200: total}, figures
    assert figures["rss_growth_mb"] <= RSS_GROWTH_MB, figures
    assert at_end["fds"] <= after_warm_up["fds"], figures
    assert at_end["threads"] <= after_warm_up["threads"], figures
    return figures


def test_soak_fast(record_property):
    run_soak(total=600, warm_up=300, largest=2048, record_property=record_property)


@pytest.mark.slow
def test_soak_full(record_property):
    run_soak(total=5000, warm_up=500, largest=4096, record_property=record_property)


# --- SIGTERM ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_with_16_in_flight_drains_them_all(record_property):
    drain_timeout = 60.0
    handle = start_server({"S2CRNET_DRAIN_TIMEOUT_S": str(drain_timeout), "S2CRNET_LOG_LEVEL": "info"})
    try:
        pairs = pairs_at(1024, 1024, 24)
        with ThreadPoolExecutor(len(pairs)) as pool:
            futures = [pool.submit(post_image, handle.url, *pair, timeout=120) for pair in pairs]
            deadline = time.monotonic() + 60
            while (in_flight := gauges(handle.url)["s2crnet_in_flight_requests"]) < 16:
                assert time.monotonic() < deadline, "never 16 in flight"
                time.sleep(0.005)
            signalled = time.monotonic()
            handle.signal(signal.SIGTERM)
            ready = httpx.get(handle.url + "/readyz", timeout=10)
            late = post_image(handle.url, *pairs[0], timeout=30)
            answers = [f.result() for f in futures]
        code = handle.wait(drain_timeout + 30)
        exit_s = time.monotonic() - signalled
    finally:
        if handle.running:
            handle.process.kill()
    record_property("sigterm_in_flight", in_flight)
    record_property("sigterm_exit_s", round(exit_s, 1))
    record_property("sigterm_statuses", {s: sum(r.status_code == s for r in answers) for s in (200, 503)})
    assert ready.status_code == 503 and ready.json()["code"] == "shutting_down"
    assert late.status_code == 503 and late.json()["code"] == "shutting_down"
    # every request admitted before the signal (≥ in_flight of them) gets its 200; later ones are refused
    refused = [r for r in answers if r.status_code != 200]
    assert len(answers) - len(refused) >= in_flight
    assert all(r.status_code == 503 and r.json()["code"] == "shutting_down" for r in refused)
    assert code == 0 and exit_s <= drain_timeout
