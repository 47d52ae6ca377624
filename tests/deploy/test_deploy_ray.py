"""docker/k8s/batch/rayjob.yaml, the KubeRay RayJob of the batch job: its pod templates validated against the
Kubernetes schema (kubernetes-validate, strict: unknown fields fail), its KubeRay fields checked, and its entrypoint
parsed by the real CLI parser so that it stays a command `s2crnet` runs."""

import re
import shlex
import tomllib

import kubernetes_validate
import pytest
import yaml
from helpers import REPO
from packaging.requirements import Requirement

from app.cli import build_parser

RAYJOB = REPO / "docker" / "k8s" / "batch" / "rayjob.yaml"
KUBERNETES = "1.30.0"  # the oldest Kubernetes the manifests are checked against


@pytest.fixture(scope="module")
def rayjob() -> dict:
    (document,) = [doc for doc in yaml.safe_load_all(RAYJOB.read_text()) if doc]
    return document


def pod_templates(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates |= {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return templates


def test_rayjob_is_a_kuberay_job_that_ends_with_its_cluster(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    assert isinstance(spec["entrypoint"], str)
    cluster = spec["rayClusterSpec"]
    ray_requirement = next(Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())
                           ["project"]["optional-dependencies"]["ray"] if r.startswith("ray"))
    assert ray_requirement.specifier.contains(cluster["rayVersion"]), "rayVersion outside the ray extra's range"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings


@pytest.mark.parametrize("group", ["head", "gpu"])
def test_rayjob_pod_templates_pass_the_kubernetes_schema(rayjob, group):
    template = pod_templates(rayjob)[group]
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"rayjob-{group}"},
                    "template": template}
    kubernetes_validate.validate(pod_template, KUBERNETES, strict=True)  # raises ValidationError with the path
    (container,) = template["spec"]["containers"]
    assert container["image"].endswith("-ray"), "the image built with EXTRAS=ray (the Dockerfile's header)"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    names = {item["name"] for item in container["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names  # every node reads the storage itself


def test_rayjob_image_is_the_dockerfiles_ray_build(rayjob):
    dockerfile = (REPO / "Dockerfile").read_text()
    images = {pod["spec"]["containers"][0]["image"] for pod in pod_templates(rayjob).values()}
    (image,) = images  # head and workers run one image (the same ray, the same s2crnet)
    assert "--build-arg EXTRAS=ray" in dockerfile and f"-t {image} ." in dockerfile
    assert 'ARG EXTRAS=""' in dockerfile and '".[onnx${EXTRAS:+,${EXTRAS}}]"' in dockerfile


def test_rayjob_entrypoint_is_a_command_the_cli_takes(rayjob):
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[0] == "s2crnet"
    args = build_parser().parse_args(words[1:])  # SystemExit (a failed test) if the CLI no longer takes it
    assert args.command == "harmonize" and args.ray == ""  # --ray alone: RAY_ADDRESS, set by KubeRay
    assert all(path.startswith("s3://") for path in (args.composites, args.masks, args.output, args.report))
    gpus = 0
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        gpus += group["replicas"] * int(resources["limits"].get("nvidia.com/gpu", 0))
        # The sizing rule of the manifest's header: the decoding tasks' reservations and the actor fit.
        cpus = int(resources["requests"]["cpu"])
        assert mebibytes(resources["limits"]["memory"]) >= (cpus - 1) * args.ray_task_memory_mb + 2048
    assert args.ray_actors * args.ray_actor_gpus == gpus, "one actor per GPU of the worker groups"


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)
