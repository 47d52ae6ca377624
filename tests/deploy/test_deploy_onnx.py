"""The onnx variant's deployment files: the Dockerfile's VARIANT=onnx path, the compose service, and
requirements-onnx.txt kept equal to pyproject's serving dependencies without torch (no Docker engine here:
the files are parsed, hadolint runs in test_deploy.py)."""

import re
import tomllib

from helpers import REPO
from test_deploy import compose, dockerfile_instructions, env_of_compose, harmonizer_services

REQUIREMENTS = REPO / "requirements-onnx.txt"


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions (the FROM line first)."""
    stages, current = {}, None
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else rest
            stages[current] = []
        if current is not None:
            stages[current].append((keyword, rest))
    return stages


def test_requirements_onnx_are_the_serving_dependencies_without_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = [d for d in project["dependencies"] if not d.startswith("torch")]
    expected += project["optional-dependencies"]["onnx"]
    listed = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    listed = [line for line in listed if line]
    normalise = lambda items: sorted(re.sub(r"\s+", "", item) for item in items)  # noqa: E731
    assert normalise(listed) == normalise(expected)
    assert not any(line.startswith("torch") for line in listed)


def test_dockerfile_onnx_variant_is_slim_exports_with_torch_and_installs_without_it():
    stages = _stages()
    assert {"base-onnx", "torch-onnx", "export"} <= set(stages)
    base = stages["base-onnx"][0][1].split()[0]
    assert base.startswith("python:3.11") and "slim" in base
    export_runs = " ".join(rest for keyword, rest in stages["export"] if keyword == "RUN")
    assert stages["export"][0][1].startswith("torch-cpu ")  # the export needs PyTorch: a build-only stage
    assert "s2crnet export --format onnx" in export_runs and ".[export]" in export_runs
    onnx_stage = stages["torch-onnx"]
    runs = " ".join(rest for keyword, rest in onnx_stage if keyword == "RUN")
    assert "requirements-onnx.txt" in runs and "torch" not in runs.replace("torch-onnx", "")
    assert ("ENV", "PIP_NO_DEPS=1") in onnx_stage  # `pip install .` must not bring torch back
    assert any(keyword == "COPY" and rest.startswith("--from=export") for keyword, rest in onnx_stage)
    # The runtime stage copies only the finished venv: PyTorch from the export stage never reaches it.
    runtime = stages["runtime"]
    assert runtime[0][1].startswith("base-${VARIANT}")
    assert [rest for keyword, rest in runtime if keyword == "COPY"] == ["--from=build /opt/venv /opt/venv"]


def test_compose_can_pick_the_onnx_variant():
    service = harmonizer_services()["harmonizer-onnx"]
    assert service["build"]["args"]["VARIANT"] == "onnx" and service["profiles"] == ["onnx"]
    assert service["image"].endswith("-onnx") and "deploy" not in service
    env = env_of_compose(service)
    assert env["S2CRNET_RUNTIME"] == "onnx" and env["S2CRNET_DEVICE"] == "cpu"
    assert "harmonizer" in service["networks"]["default"]["aliases"]
    assert set(compose()["services"]) >= {"harmonizer", "harmonizer-cpu", "harmonizer-onnx"}
