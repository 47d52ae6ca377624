"""Limits over real HTTP, each on a server started with its own settings: API key, body size (declared and
chunked), pixel count, request deadline, and settings that must fail fast at start-up."""

import select
import socket
import subprocess
import sys
import time

import httpx
import pytest
from helpers import REPO, encode, post_image, read_http_answer, real_pair, start_server
from PIL import Image

KEY = "s3cret-token"
UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def guarded():
    """A server with an API key, a 200 kB body limit and a 1 MP pixel limit."""
    handle = start_server({"S2CRNET_API_KEY": KEY, "S2CRNET_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
                           "S2CRNET_MAX_PIXELS": "1000000"})
    yield handle
    handle.stop()


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- API key ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/harmonize", "/curves"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {KEY}", KEY, "Bearer",
                                           f"Bearer {KEY}x"])
def test_work_endpoints_need_the_key(guarded, small_pair, endpoint, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = post_image(guarded.url, *small_pair, endpoint=endpoint, headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text


@pytest.mark.parametrize("endpoint", ["/harmonize", "/curves"])
def test_the_right_key_gets_in(guarded, small_pair, endpoint):
    assert post_image(guarded.url, *small_pair, endpoint=endpoint, headers=_auth()).status_code == 200


def test_openapi_declares_the_bearer_token(guarded):
    spec = httpx.get(guarded.url + "/openapi.json").json()
    for path in ("/harmonize", "/curves"):
        assert spec["paths"][path]["post"]["security"] == [{"HTTPBearer": []}]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/info", "/openapi.json"])
def test_health_info_and_metrics_stay_open(guarded, path):
    assert httpx.get(guarded.url + path).status_code == 200


# --- body size ----------------------------------------------------------------------------------------------
def _raw_request(url: str, head: str, chunks: list[bytes] = (), pause: float = 0.02) -> bytes:
    """Send a request head and body chunks over a plain socket; stop sending as soon as an answer arrives."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        for chunk in chunks:
            if select.select([sock], [], [], pause)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed while we were sending
                break
        return read_http_answer(sock, answer)


def test_declared_body_over_the_limit_is_413_before_reading(guarded):
    head = (f"POST /harmonize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {UPLOAD_LIMIT + 1}\r\n\r\n")
    answer = _raw_request(guarded.url, head)  # not one body byte sent: the answer comes from the header alone
    assert answer.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in answer


def test_chunked_body_over_the_limit_is_413_while_reading(guarded):
    head = (f"POST /harmonize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    part = (b'--b\r\nContent-Disposition: form-data; name="composite"; filename="c.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    payload = [part] + [b"\xff" * 16384] * 40  # 640 kB, no Content-Length anywhere
    chunks = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in payload]
    answer = _raw_request(guarded.url, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert httpx.get(guarded.url + "/healthz").status_code == 200


def test_body_within_the_limit_passes(guarded):
    composite, mask = real_pair(200, 150, 3)
    response = post_image(guarded.url, encode(composite, "JPEG"), encode(mask, "PNG"), headers=_auth())
    assert response.status_code == 200


# --- pixel count --------------------------------------------------------------------------------------------
def test_pixel_limit_from_settings(guarded):
    composite = encode(Image.new("1", (1500, 1000)), "PNG")  # 1.5 MP, 200 bytes
    mask = encode(Image.new("L", (1500, 1000)), "PNG")
    response = post_image(guarded.url, composite, mask, headers=_auth())
    assert response.status_code == 413 and response.json()["code"] == "image_too_large"
    assert "1500000" in response.json()["detail"]


def test_in_flight_gauge_returns_to_zero(guarded):
    text = httpx.get(guarded.url + "/metrics").text
    assert "\ns2crnet_in_flight_requests 0.0\n" in text
    assert 'status="500"' not in text


# --- deadline -----------------------------------------------------------------------------------------------
def test_request_past_its_deadline_is_504():
    # A deadline that a small upload meets (else it would be 408) but a 4096² decode + render cannot.
    handle = start_server({"S2CRNET_REQUEST_TIMEOUT_S": "0.1"})
    try:
        composite, mask = real_pair(4096, 4096, 4)
        response = post_image(handle.url, encode(composite, "JPEG", quality=40), encode(mask, "PNG"))
        assert response.status_code == 504 and response.json()["code"] == "timeout"
        assert httpx.get(handle.url + "/healthz").status_code == 200
        # an upload that never finishes holds its slot only until the deadline
        head = ("POST /harmonize HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        answer = _raw_request(handle.url, head)
        assert answer.startswith(b"HTTP/1.1 408") and b'"upload_timeout"' in answer
        time.sleep(0.5)  # the abandoned work finishes its current stage, then the gauge is back at 0
        assert "\ns2crnet_in_flight_requests 0.0\n" in httpx.get(handle.url + "/metrics").text
    finally:
        assert handle.stop() == 0


# --- fail fast at start-up ----------------------------------------------------------------------------------
@pytest.mark.parametrize("env,message", [
    ({"S2CRNET_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
    ({"S2CRNET_DEVICE": "tpu"}, "device"),
    ({"S2CRNET_PNG_COMPRESS_LEVEL": "12"}, "png_compress_level"),
    ({"S2CRNET_WEIGHTS": "/no/such/weights.pt"}, "does not exist"),
])
def test_bad_settings_stop_the_start(env, message):
    handle = start_server(env, wait_ready=False)
    assert handle.wait(60) != 0
    assert message in handle.logs


def test_unusable_weights_stop_the_start(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    handle = start_server({"S2CRNET_WEIGHTS": str(junk)}, wait_ready=False)
    assert handle.wait(60) != 0
    assert "not a valid S2CRNet weights file" in handle.logs


def test_uvicorn_command_serves_the_module_level_app():
    """`uvicorn app.main:app` reads S2CRNET_* itself (here: the API key)."""
    handle = start_server({"S2CRNET_API_KEY": KEY},
                          args=[sys.executable, "-m", "uvicorn", "app.main:app", "--host", "{host}",
                                "--port", "{port}"])
    try:
        assert httpx.get(handle.url + "/info").json()["auth"] is True
    finally:
        handle.stop()


def test_importing_the_app_reads_no_environment():
    """The CLI and tests import app.main without a valid environment; only `app.main.app` reads it."""
    code = "import app.main, app.settings; print(app.main.create_app.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={"S2CRNET_MAX_BATCH_SIZE": "0", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
