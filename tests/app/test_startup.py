"""Start-up errors are one line with the same exit code however the service starts; the CLI speaks in one
voice (issue 19, items 9 and 10): 2 = bad configuration, 3 = weights that cannot be loaded."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from helpers import REPO, encode, post_image, real_pair, start_server
from PIL import Image

S2CRNET = str(Path(sys.executable).parent / "s2crnet")
SERVE = {"python -m app": [sys.executable, "-m", "app"],
         "s2crnet serve": [S2CRNET, "serve", "--host", "{host}", "--port", "{port}"]}


def _failed_start(args: list[str], env: dict) -> tuple[int, list[str]]:
    handle = start_server(env, args=args, wait_ready=False)
    code = handle.wait(timeout=120)
    return code, handle.logs.strip().splitlines()


@pytest.fixture(scope="module")
def junk_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "junk.pt"
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.mark.parametrize("how", sorted(SERVE))
@pytest.mark.parametrize("case, env, code, words", [
    ("junk weights", {}, 3, "S2CRNET_WEIGHTS"),
    ("cuda without a GPU", {"S2CRNET_DEVICE": "cuda"}, 2, "S2CRNET_DEVICE=cuda"),
    ("port 0", {"S2CRNET_PORT": "0"}, 2, "S2CRNET_PORT=0"),
    ("non-ASCII API key", {"S2CRNET_API_KEY": "clé-secrète"}, 2, "S2CRNET_API_KEY"),
])
def test_start_up_errors_are_one_line_and_one_exit_code(how, case, env, code, words, junk_weights):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {**env, "S2CRNET_WEIGHTS": str(junk_weights)} if case == "junk weights" else env
    args = list(SERVE[how])
    if case == "port 0" and how == "s2crnet serve":
        args[-1], env = "0", {}  # the flag, as the issue ran it
    exit_code, lines = _failed_start(args, env)
    assert exit_code == code, lines
    assert len(lines) == 1 and lines[0].startswith("s2crnet: error: "), lines
    assert words in lines[0] and "Traceback" not in lines[0]
    assert "secrète" not in lines[0]  # a key is never echoed
    if case == "junk weights":
        assert str(junk_weights) in lines[0] and lines[0].rstrip()[-1] == ")"  # not a bare number at the end


def test_cli_curves_name_the_model_as_the_server_does(server, tmp_path):
    composite, mask = real_pair(96, 64, 4)
    composite.save(tmp_path / "c.jpg")
    mask.save(tmp_path / "m.png")
    result = subprocess.run([S2CRNET, "harmonize", tmp_path / "c.jpg", tmp_path / "m.png", "-o", tmp_path / "o.jpg",
                             "--curves", tmp_path / "curves.json", "--device", "cpu"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    served = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"), endpoint="/curves").json()
    assert json.loads((tmp_path / "curves.json").read_text())["model"] == served["model"]
    assert httpx.get(server.url + "/info").json()["name"] == served["model"]


def test_cli_library_warnings_are_one_line(tmp_path):
    composite, mask = real_pair(96, 64, 5)
    exif = Image.Exif()
    exif[0x010E] = "x" * 200  # ImageDescription, then cut short: Pillow warns while reading the orientation
    composite.save(tmp_path / "c.jpg", exif=exif.tobytes()[:-150])
    mask.save(tmp_path / "m.png")
    result = subprocess.run([S2CRNET, "harmonize", tmp_path / "c.jpg", tmp_path / "m.png", "-o", tmp_path / "o.jpg",
                             "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2crnet: warning: "), lines
    assert ".py" not in lines[0]
