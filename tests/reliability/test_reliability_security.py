"""Security over real HTTP: the API key (any Authorization header but the right one → 401 on the work endpoints;
health, info and metrics open), the key compared in constant time, no client input becoming a file path, no temp
files left behind, no file contents or stack traces in errors, and the dependency versions.

    nice -n 15 .venv/bin/pytest -q tests/reliability/test_reliability_security.py
"""

import hmac
import io
import os
import struct
import tomllib
import zlib
from importlib.metadata import version
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import REPO, encode, post_image, real_pair, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

import app.middleware

KEY = "k3y-0f-the-reliability-suite"
SECRET = b"SECRET-LINE-9d2e41 password=hunter2"  # planted in uploads: no answer may repeat it
OPEN_PATHS = ("/healthz", "/readyz", "/info", "/metrics", "/openapi.json")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with an API key whose temp dir (TMPDIR) is a fresh, empty folder the test can watch."""
    temp = tmp_path_factory.mktemp("server-tmp")
    handle = start_server({"S2CRNET_API_KEY": KEY, "TMPDIR": str(temp), "S2CRNET_LOG_LEVEL": "warning"})
    handle.temp = temp
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    composite, mask = real_pair(160, 120, 2)
    return encode(composite, "JPEG", quality=90), encode(mask, "PNG")


def _header(text: str) -> bytes:
    """As a header value goes on the wire: surrounding blanks are not part of it (RFC 9110 5.5)."""
    return text.strip(" \t").encode("latin-1")


# --- the API key ------------------------------------------------------------------------------------------------
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=80)
near_misses = st.sampled_from([
    "", "Bearer", "Bearer ", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Bearer {KEY.upper()}", f"Bearer x{KEY}",
    f"Token {KEY}", f"Basic {KEY}", KEY, f"Bearer\t{KEY}", f"Bearer {KEY} {KEY}", f"Bearer:{KEY}",
    f"Bearer {KEY}\u00e9", f"BearerBearer {KEY}", f"Bearer {KEY[: len(KEY) // 2]}"])
authorizations = st.one_of(near_misses, header_text, header_text.map(lambda t: f"Bearer {t}"),
                           st.sampled_from([f"Bearer {KEY}", f"bearer {KEY}", f"BEARER  {KEY} "]))


def _key_is_right(authorization: str) -> bool:
    """What RFC 6750 accepts: the scheme in any case, then the token (surrounding blanks ignored)."""
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip() == KEY


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(authorization=authorizations, endpoint=st.sampled_from(["/harmonize", "/curves"]),
       send_header=st.booleans())
def test_only_the_right_key_gets_in(keyed, pair, authorization, endpoint, send_header):
    headers = {"Authorization": _header(authorization)} if send_header else {}
    response = post_image(keyed.url, *pair, endpoint=endpoint, headers=headers)
    if send_header and _key_is_right(authorization):
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 401, (authorization, response.text)
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(authorization=authorizations, path=st.sampled_from(OPEN_PATHS))
def test_health_info_and_metrics_stay_open_whatever_the_header(keyed, authorization, path):
    response = httpx.get(keyed.url + path, headers={"Authorization": _header(authorization)}, timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize("authorization", [f"Bearer {KEY}", f"Bearer {KEY[:-1]}", "Bearer x", "Basic y", ""])
def test_the_key_is_compared_in_constant_time(monkeypatch, authorization):
    """Every check goes through hmac.compare_digest (its time does not depend on where the strings differ)."""
    calls = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(app.middleware.hmac, "compare_digest", spy)
    accepted = app.middleware._bearer_matches(authorization, KEY)
    assert accepted == _key_is_right(authorization)
    if authorization.lower().startswith("bearer "):
        assert calls == [(authorization.partition(" ")[2].encode(), KEY.encode())]


# --- files and paths ---------------------------------------------------------------------------------------------
PATH_NAMES = ["../../../{canary}.jpg", "/tmp/{canary}.png", "{temp}/{canary}.jpg", "..\\..\\{canary}.bmp",
              "{repo}/{canary}.jpg", "%2e%2e%2f{canary}", "{canary}\x00.jpg"]


def _places_to_look(handle, canary: str) -> list[Path]:
    roots = [handle.temp, handle.temp.parent, Path("/tmp"), REPO, REPO / "app", Path.cwd(), Path("/")]
    return [root / name for root in roots for name in (canary, f"{canary}.jpg", f"{canary}.png", f"{canary}.bmp")]


def _open_temp_files(handle) -> list[str]:
    files = psutil.Process(handle.process.pid).open_files()
    return [f.path for f in files if f.path.startswith(str(handle.temp)) or "(deleted)" in f.path]


def test_no_client_input_becomes_a_file_path_and_no_temp_file_stays(keyed):
    assert list(keyed.temp.iterdir()) == []
    canary = f"pwned-{os.getpid()}"
    # over 1 MB: Starlette spools such uploads to a temp file, the case that could leave one behind
    composite, mask = real_pair(1600, 1200, 1)
    big = encode(composite, "PNG", compress_level=0)
    assert len(big) > 1024 * 1024
    mask_bytes = encode(mask, "PNG")
    for template in PATH_NAMES:
        name = template.format(canary=canary, temp=keyed.temp, repo=REPO)
        response = post_image(keyed.url, big, mask_bytes, headers={"Authorization": f"Bearer {KEY}"},
                              names=(name, name), fields={"format": "png", "category": name})
        assert response.status_code in (200, 422), response.text
    assert [p for p in _places_to_look(keyed, canary) if p.exists()] == []
    assert list(keyed.temp.iterdir()) == []
    assert _open_temp_files(keyed) == []


def _png_with_text_and_broken_pixels() -> bytes:
    """A PNG whose tEXt chunk holds the secret and whose pixel data is garbage."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"Comment\x00" + SECRET)
            + chunk(b"IDAT", zlib.compress(SECRET)) + chunk(b"IEND", b""))


def _secret_uploads(pair: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    composite, mask = pair
    text_file = b"line one\n" + SECRET + b"\n" * 3
    exif = Image.Exif()
    exif[0x010E] = SECRET.decode()  # ImageDescription
    buffer = io.BytesIO()
    Image.open(io.BytesIO(composite)).save(buffer, "JPEG", exif=exif.tobytes())
    with_exif = buffer.getvalue()
    return [(text_file, mask), (composite, text_file), (_png_with_text_and_broken_pixels(), mask),
            (composite, _png_with_text_and_broken_pixels()), (with_exif[: len(with_exif) // 2], mask),
            (b"%PDF-1.4\n" + SECRET, SECRET), (SECRET * 1000, mask)]


@pytest.mark.parametrize("endpoint", ["/harmonize", "/curves"])
def test_errors_never_echo_file_contents_or_stack_traces(keyed, pair, endpoint):
    for composite, mask in _secret_uploads(pair):
        response = post_image(keyed.url, composite, mask, endpoint=endpoint,
                              headers={"Authorization": f"Bearer {KEY}"})
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"detail", "code"}
        for leak in (SECRET, b"hunter2", b"Traceback", b'File "', str(REPO).encode(), b".py"):
            assert leak not in response.content, (leak, response.text)
    assert SECRET.decode() not in keyed.logs  # nor does the log keep what clients uploaded


# --- dependencies -------------------------------------------------------------------------------------------------
# package → (first fixed release, the last release before it): see docs/RELIABILITY.md for the advisories
MINIMUM = {"python-multipart": ("0.0.27", "0.0.26"), "pillow": ("12.2", "12.1.1")}


@pytest.mark.parametrize("package", sorted(MINIMUM))
def test_installed_dependencies_are_not_older_than_the_fixed_releases(package):
    assert Version(version(package)) >= Version(MINIMUM[package][0])


@pytest.mark.parametrize("package", sorted(MINIMUM))
def test_pyproject_refuses_releases_before_the_fix(package):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}
    fixed, older = MINIMUM[package]
    specifier = requirements[package].specifier
    assert specifier.contains(fixed) and not specifier.contains(older), f"{package}{specifier}"
