"""The onnx runtime without PyTorch: the CLI and the server run with torch made unimportable and give the images
the torch runtime gives; a missing export, a stale one and a missing onnxruntime fail at start-up in one line."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import REPO, decode, encode, post_image, real_pair, shipped_weights_with_onnx, start_server

from model import Harmonizer

S2CRNET = Path(sys.executable).parent / "s2crnet"
# Put first on sys.meta_path by sitecustomize (PYTHONPATH): any import of these packages raises ImportError.
_BLOCKER = '''import sys
BLOCKED = {blocked!r}

class _Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Unimportable())
'''


def _blocking(tmp_path: Path, *packages: str) -> dict[str, str]:
    folder = tmp_path / ("block-" + "-".join(packages))
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(_BLOCKER.format(blocked=set(packages)))
    return {"PYTHONPATH": str(folder)}


def _run(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(S2CRNET), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The shipped weights in a folder of their own, their ONNX export beside them."""
    return shipped_weights_with_onnx(tmp_path_factory.mktemp("onnx-weights"))


def test_the_blocker_really_blocks_torch(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=_blocking(tmp_path, "torch"),
                            capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_cli_without_torch_gives_the_torch_runtime_images(tmp_path, weights):
    image, mask = real_pair(401, 299, index=5)
    image.save(tmp_path / "comp.png")
    mask.save(tmp_path / "mask.png")
    no_torch = _blocking(tmp_path, "torch")
    result = _run(["harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", tmp_path / "onnx.png",
                   "--weights", weights, "--runtime", "onnx", "--curves", tmp_path / "c.json"], no_torch)
    assert result.returncode == 0, result.stderr
    result = _run(["harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", tmp_path / "torch.png",
                   "--weights", weights, "--runtime", "torch"], {})
    assert result.returncode == 0, result.stderr
    onnx_out = np.asarray(decode((tmp_path / "onnx.png").read_bytes()), int)
    torch_out = np.asarray(decode((tmp_path / "torch.png").read_bytes()), int)
    assert np.abs(onnx_out - torch_out).max() <= 1
    expected = Harmonizer.load(weights, "cpu", runtime="onnx").harmonize(image, mask)
    assert np.array_equal(onnx_out, np.asarray(expected, int))
    # Folder mode (the batched path) and info run without torch too; auto picks onnx where torch is missing.
    result = _run(["info", "--weights", weights], no_torch)
    assert result.returncode == 0 and "onnx" in result.stdout, result.stderr


def test_server_without_torch_gives_the_torch_runtime_images(tmp_path, weights):
    composite, mask = real_pair(512, 384, index=2)
    env = {**_blocking(tmp_path, "torch"), "S2CRNET_WEIGHTS": str(weights), "S2CRNET_RUNTIME": "onnx"}
    handle = start_server(env=env)
    try:
        response = post_image(handle.url, encode(composite, "PNG"), encode(mask, "PNG"), fields={"format": "png"})
        info = httpx.get(handle.url + "/info", timeout=30).json()["model"]
    finally:
        assert handle.stop() == 0
    assert response.status_code == 200, response.text
    assert info["runtime"] == "onnx" and info["sha256"] == Harmonizer.load(weights, "cpu").sha256
    served = np.asarray(decode(response.content), int)
    torch_h = Harmonizer.load(weights, "cpu", runtime="torch")
    assert np.abs(served - np.asarray(torch_h.harmonize(composite, mask), int)).max() <= 1


@pytest.mark.parametrize("case", ["no export", "stale export", "no onnxruntime"])
def test_start_up_errors_name_the_file_or_package(tmp_path, weights, case):
    env = _blocking(tmp_path, "torch")
    target = weights
    if case == "no export":
        target = tmp_path / "lonely.pt"
        shutil.copyfile(weights, target)
        words = [str(target.with_suffix(".onnx")), "s2crnet export"]
    elif case == "stale export":
        target = tmp_path / "stale.pt"
        target.write_bytes(weights.read_bytes() + b"\0")  # other bytes, other sha256
        shutil.copyfile(weights.with_suffix(".onnx"), target.with_suffix(".onnx"))
        words = [str(target.with_suffix(".onnx")), "sha256"]
    else:
        env = _blocking(tmp_path, "onnxruntime")
        words = ["onnxruntime", "s2crnet[onnx]"]
    result = _run(["serve", "--weights", target, "--runtime", "onnx", "--port", "1"], env)
    assert result.returncode in (2, 3), result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("s2crnet: error:"), line
    for word in words:
        assert word in line
