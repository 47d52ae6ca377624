"""What the page needs from the service, over HTTP: the page itself (static, not behind the key), CORS for pages on
other origins (S2CRNET_CORS_ORIGINS), and structured logs (S2CRNET_LOG_FORMAT=json)."""

import json

import httpx
import pytest
from helpers import logs_with, post_image, start_server

from app.settings import Settings

KEY = "web-test-key"
ORIGIN = "https://editor.example"


@pytest.fixture(scope="module")
def web_server():
    """API key, CORS for one origin, JSON logs."""
    handle = start_server(env={"S2CRNET_API_KEY": KEY, "S2CRNET_CORS_ORIGINS": f"{ORIGIN}, http://localhost:3000",
                               "S2CRNET_LOG_FORMAT": "json"})
    yield handle
    handle.stop()


def test_the_page_is_served_without_the_key_and_the_api_still_needs_it(web_server):
    page = httpx.get(web_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for element_id in ("composite", "mask", "foreground", "background", "run", "result", "strength", "mismatch",
                       "download"):
        assert f'id="{element_id}"' in page.text, element_id
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{web_server.url}/web/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
    assert httpx.get(web_server.url + "/web/../settings.py").status_code == 404
    assert httpx.get(web_server.url + "/web/index.htm").status_code == 404
    assert httpx.get(web_server.url + "/docs").status_code == 200
    assert post_image(web_server.url, b"x", b"y").status_code == 401


def test_cors_preflight_is_answered_for_a_listed_origin_only(web_server):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    answer = httpx.options(web_server.url + "/harmonize", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    refused = httpx.options(web_server.url + "/harmonize", headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_cors_headers_reach_answers_and_the_gates_refusals(web_server, small_pair):
    composite, mask = small_pair
    ok = post_image(web_server.url, composite, mask, headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    exposed = ok.headers["access-control-expose-headers"].lower()
    assert "x-harmonization-mismatch" in exposed and "x-request-id" in exposed
    refused = post_image(web_server.url, composite, mask, headers={"Origin": ORIGIN})  # no key: the gate's 401
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_headers_when_no_origin_is_set(server, small_pair):
    composite, mask = small_pair
    answer = post_image(server.url, composite, mask, headers={"Origin": ORIGIN})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    preflight = httpx.options(server.url + "/harmonize", headers={"Origin": ORIGIN,
                                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("value", ["https://a.example/", "a.example", "https://a.example/path"])
def test_an_origin_a_browser_never_sends_fails_at_start_up(value):
    with pytest.raises(ValueError, match="is not an origin"):
        Settings(cors_origins=value)


def test_json_logs_are_one_object_a_line_with_the_request_fields(web_server, small_pair):
    composite, mask = small_pair
    answer = post_image(web_server.url, composite, mask, headers={"Authorization": f"Bearer {KEY}",
                                                                 "X-Request-ID": "json-log-test-1"})
    assert answer.status_code == 200
    post_image(web_server.url, composite, mask, headers={"X-Request-ID": "json-log-test-2"})  # 401
    lines = [line for line in logs_with(web_server, "json-log-test-2").splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, uvicorn's too, is one JSON object
    assert all({"time", "level", "message"} <= set(entry) for entry in entries)
    assert any("Uvicorn running" in entry["message"] for entry in entries)
    (done,) = [e for e in entries if e.get("request_id") == "json-log-test-1" and e["logger"] == "app.access"]
    assert done["endpoint"] == "/harmonize" and done["method"] == "POST" and done["status"] == 200
    assert done["image_size"] == "320x240" and done["duration_ms"] > 0 and done["level"] == "info"
    (refused,) = [e for e in entries if e.get("request_id") == "json-log-test-2" and e["logger"] == "app.access"]
    assert refused["status"] == 401 and "image_size" not in refused
    assert KEY not in web_server.logs


def test_text_logs_stay_the_default(server, small_pair):
    composite, mask = small_pair
    post_image(server.url, composite, mask, headers={"X-Request-ID": "text-log-test"})
    (line,) = [line for line in logs_with(server, "id=text-log-test").splitlines() if "id=text-log-test" in line]
    assert " INFO app.access: POST /harmonize 200 " in line and " 320x240 " in line
    assert not line.lstrip().startswith("{")
