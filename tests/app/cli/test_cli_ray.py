"""`s2crnet harmonize ... --ray`: folder and manifest mode as a Ray Data job, on a real local Ray cluster (2 CPUs,
127.0.0.1) and a real S3-compatible server (moto's, on 127.0.0.1), checked byte for byte against the
single-machine CLI's outputs on the same files.

The cluster is the test process's own (ray.init); the CLI joins it by its address in a subprocess, so the test can
kill one of the job's curve-predicting actors while it runs. The output bucket keeps versions: an output written
twice would show two.
"""

import csv
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, photo_composites, real_cutout

from app.cli.ray_batch import loopback_only

loopback_only()  # before ray is imported: the cluster listens on 127.0.0.1 only
import ray  # noqa: E402
import s3fs  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from app.cli.storage import location, write_whole  # noqa: E402

S2CRNET = Path(sys.executable).parent / "s2crnet"
SUMMARY = re.compile(r"(\d+) harmonized, (\d+) skipped \(output exists\), (\d+) failed, (\d+) unpaired")
COUNT = 40  # composites in the default suite; the issue's 300 run in the slow test
BATCH = 4  # --batch-size of both modes: the same forward passes, so the same bytes (ray_batch.Group)
ACTOR, RENDER = "PredictCurves", "render_and_write"  # in the process titles of the job's workers


# --- the services: an S3 server and a Ray cluster, both on 127.0.0.1 ---------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port → (endpoint, s3fs client). Credentials go in the environment
    before the cluster starts, so its workers inherit them (on a real cluster: the pods' environment)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL", raising=False)  # the CLI gets --s3-endpoint: the flag is what is tested
        yield endpoint, s3fs.S3FileSystem(endpoint_url=endpoint)
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """A local Ray cluster of 2 CPUs in a temporary folder → its address for `--ray ADDRESS`."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
             _temp_dir=temp, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def make_inputs(root: Path, count: int) -> Path:
    """`count` real-photo composites and their masks, plus a truncated JPEG (with its mask) → root."""
    names = photo_composites(root / "composites", root / "masks", count)
    whole = (root / "composites" / names[0]).read_bytes()
    (root / "composites" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    shutil.copy(root / "masks" / "photo0000.png", root / "masks" / "broken.png")
    return root


def single_machine(inputs: Path, out: Path, skipped: int = 0) -> dict[str, bytes]:
    """Plain folder mode on the same files (into `out`, which may hold outputs already): the bytes every --ray
    output must have."""
    result = run(["harmonize", "--composites", inputs / "composites", "--masks", inputs / "masks", "-o", out,
                  "--batch-size", BATCH])
    count = len(list((inputs / "masks").iterdir())) - 1
    assert summary(result) == (count - skipped, skipped, 1, 0), result.stderr
    return {path.name: path.read_bytes() for path in out.iterdir()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, s3) -> tuple[Path, dict[str, bytes]]:
    """The inputs on disk and in s3://inbox/{composites,masks}/, and folder mode's outputs of them."""
    root = make_inputs(tmp_path_factory.mktemp("inputs"), COUNT)
    _, fs = s3
    fs.mkdir("inbox")
    for folder in ("composites", "masks"):
        fs.put(str(root / folder) + "/", f"inbox/{folder}/", recursive=True)
    return root, single_machine(root, tmp_path_factory.mktemp("reference"))


def versioned_bucket(fs: s3fs.S3FileSystem, name: str) -> None:
    fs.mkdir(name)
    fs.call_s3("put_bucket_versioning", Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def versions(fs: s3fs.S3FileSystem, bucket: str, prefix: str) -> dict[str, int]:
    """How many times each key under prefix/ was written."""
    answer = fs.call_s3("list_object_versions", Bucket=bucket, Prefix=prefix + "/")
    counts: dict[str, int] = {}
    for version in answer.get("Versions", []):
        key = version["Key"].removeprefix(prefix + "/")
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- running the CLI ---------------------------------------------------------------------------------------------

def command(args) -> list[str]:
    return [str(S2CRNET), *map(str, args)]


def run(args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def summary(result: subprocess.CompletedProcess) -> tuple[int, ...]:
    match = SUMMARY.search(result.stdout)
    assert match, f"no summary line in stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return tuple(int(n) for n in match.groups())


def ray_job(cluster: str, endpoint: str, source: str, out: str, *extra) -> list:
    return ["harmonize", "--composites", f"{source}/composites", "--masks", f"{source}/masks", "-o", out,
            "--ray", cluster, "--s3-endpoint", endpoint, "--batch-size", BATCH, *extra]


def ray_workers() -> dict[int, str]:
    """This test's cluster's worker processes (descendants of this process) → their titles, which Ray sets to
    what each runs: ray::MapWorker(MapBatches(PredictCurves)).__init__ while an actor loads the model, then
    ray::MapWorker(MapBatches(PredictCurves))[.submit]; ray::MapBatches(render_and_write) for a render task."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::"):
            found[process.pid] = title
    return found


def run_killing_workers(args, timeout: float = 300):
    """Run the CLI and SIGKILL two of its workers mid-job: the curve-predicting actor once it has loaded the
    model and taken work (more is coming: decoding is still under way), then a render task's worker while it
    writes outputs → (result, {"actor": pid, "render": pid} of those killed, actors seen after the kill)."""
    process = subprocess.Popen(command(args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    output: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: output.__setitem__(k, s.read()), daemon=True)
               for k, s in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    killed: dict[str, int] = {}
    restarted: set[int] = set()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        workers = ray_workers()
        actors = {pid for pid, title in workers.items() if ACTOR in title}
        if "actor" not in killed:
            ready = sorted(pid for pid in actors if "__init__" not in workers[pid])
            if ready:
                killed["actor"] = ready[0]
                os.kill(ready[0], signal.SIGKILL)
        else:
            restarted |= actors - {killed["actor"]}
            rendering = sorted(pid for pid, title in workers.items() if RENDER in title)
            if "render" not in killed and rendering:
                killed["render"] = rendering[0]
                os.kill(rendering[0], signal.SIGKILL)
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    process.wait()
    for reader in readers:
        reader.join()
    result = subprocess.CompletedProcess(process.args, process.returncode, output["stdout"], output["stderr"])
    return result, killed, restarted


def check_bucket_holds_reference(fs, bucket: str, prefix: str, reference: dict[str, bytes]) -> None:
    """Every output there, with folder mode's bytes, written exactly once; nothing else (no partial file)."""
    written = versions(fs, bucket, prefix)
    assert sorted(written) == sorted(reference), set(written) ^ set(reference)
    assert set(written.values()) == {1}, {key: n for key, n in written.items() if n != 1}
    for name, data in reference.items():
        assert fs.cat_file(f"{bucket}/{prefix}/{name}") == data, name


# --- the tests ---------------------------------------------------------------------------------------------------

def test_s3_to_s3_through_the_cluster_with_workers_killed(cluster, s3, inputs, tmp_path):
    endpoint, fs = s3
    _, reference = inputs
    versioned_bucket(fs, "outbox")
    report = tmp_path / "report.csv"

    result, killed, restarted = run_killing_workers(
        ray_job(cluster, endpoint, "s3://inbox", "s3://outbox/run1", "--report", report))

    assert set(killed) == {"actor", "render"}, f"killed only {killed}"
    assert restarted, "no actor took over from the killed one"
    assert result.returncode == 1, result.stderr  # the broken file fails; the job does not
    assert summary(result) == (COUNT, 0, 1, 0)
    assert re.search(r"^s2crnet: failed broken\.jpg: .*truncated", result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr
    check_bucket_holds_reference(fs, "outbox", "run1", reference)
    with report.open(newline="") as f:
        rows = list(csv.DictReader(f))
    statuses = {Path(row["input"]).name: row["status"] for row in rows}
    assert len(rows) == COUNT + 1 and statuses.pop("broken.jpg") == "failed"
    assert set(statuses.values()) == {"harmonized"}
    assert all(row["output"].startswith("s3://outbox/run1/") for row in rows)
    assert all(float(row["mismatch"]) > 0 and float(row["infer_ms"]) > 0 for row in rows if row["mismatch"])


def test_resume_skips_outputs_already_there_and_never_overwrites_them(cluster, s3, inputs, tmp_path):
    endpoint, fs = s3
    root, reference = inputs
    versioned_bucket(fs, "resumed")
    fs.mkdir("reports")
    names = sorted(reference)
    done, stale = names[:10], names[10]
    earlier = {**{name: reference[name] for name in done}, stale: b"an earlier run's output"}
    for name, data in earlier.items():  # the same outputs in the bucket and in a local folder
        fs.pipe_file(f"resumed/out/{name}", data)
        (tmp_path / "resumed").mkdir(exist_ok=True)
        (tmp_path / "resumed" / name).write_bytes(data)
    resumed_reference = single_machine(root, tmp_path / "resumed", skipped=11)  # folder mode resumed likewise

    result = run(ray_job(cluster, endpoint, "s3://inbox", "s3://resumed/out", "--report",
                         "s3://reports/resumed.csv"))

    assert summary(result) == (COUNT - 11, 11, 1, 0), result.stderr
    rows = list(csv.DictReader(fs.cat_file("reports/resumed.csv").decode().splitlines()))
    statuses = [row["status"] for row in rows]
    assert len(rows) == COUNT + 1 and statuses.count("skipped") == 11 and statuses.count("failed") == 1
    assert fs.cat_file(f"resumed/out/{stale}") == b"an earlier run's output"  # kept: no --overwrite
    check_bucket_holds_reference(fs, "resumed", "out", resumed_reference)


def test_local_manifest_through_the_cluster_equals_manifest_mode(cluster, s3, inputs, tmp_path):
    endpoint, _ = s3
    root, _ = inputs
    cutouts = [tmp_path / f"cutout{i}.png" for i in range(3)]
    for i, path in enumerate(cutouts):
        real_cutout(i, scale=0.3).save(path)
    backgrounds = sorted((root / "composites").glob("photo*.jpg"))[:3]
    manifest = tmp_path / "manifest.csv"
    lines = ["foreground,background,x,y,scale"]
    lines += [f"{fg},{bg},{4 * i},{-3 * i},0.5" for i, (fg, bg) in enumerate(zip(cutouts, backgrounds, strict=True))]
    lines += [f"{cutouts[0]},{backgrounds[0]},9999,0,1"]  # lands outside: the row fails, the job goes on
    manifest.write_text("\n".join(lines) + "\n")

    plain = run(["harmonize", "--layers", manifest, "-o", tmp_path / "plain", "--feather", 1, "--batch-size", 2])
    on_ray = run(["harmonize", "--layers", manifest, "-o", tmp_path / "ray", "--feather", 1, "--batch-size", 2,
                  "--ray", cluster, "--s3-endpoint", endpoint])

    assert summary(plain) == summary(on_ray) == (3, 0, 1, 0), plain.stderr + on_ray.stderr
    assert "s2crnet: failed manifest.csv:5: x, y: " in on_ray.stderr
    produced = {path.name: path.read_bytes() for path in (tmp_path / "ray").iterdir()}
    assert produced == {path.name: path.read_bytes() for path in (tmp_path / "plain").iterdir()}
    assert len(produced) == 3


@pytest.mark.slow
def test_the_issues_bar_300_composites_bucket_to_bucket_with_an_actor_killed(cluster, s3, tmp_path):
    """Issue 32's bar: 300 composites from one local bucket to another through the local cluster, outputs
    identical to folder mode's, none lost, one actor killed during the run."""
    endpoint, fs = s3
    root = make_inputs(tmp_path / "inputs", 300)
    reference = single_machine(root, tmp_path / "reference")
    fs.mkdir("bar-in")
    for folder in ("composites", "masks"):
        fs.put(str(root / folder) + "/", f"bar-in/{folder}/", recursive=True)
    versioned_bucket(fs, "bar-out")

    result, killed, restarted = run_killing_workers(
        ray_job(cluster, endpoint, "s3://bar-in", "s3://bar-out/h", "--ray-actors", 2, "--ray-actor-cpus", 0.5),
        timeout=900)

    assert set(killed) == {"actor", "render"} and restarted
    assert summary(result) == (300, 0, 1, 0), result.stderr
    check_bucket_holds_reference(fs, "bar-out", "h", reference)


# --- pieces that need no cluster ---------------------------------------------------------------------------------

def test_write_whole_never_replaces_an_output_unless_asked(s3, tmp_path):
    _, fs = s3
    local = tmp_path / "sub" / "out.png"
    fs.mkdir("whole")
    remote = location("s3://whole/out.png", {"endpoint_url": s3[0]})
    for path in (local, remote):
        assert write_whole(path, b"first", overwrite=False)
        assert not write_whole(path, b"second", overwrite=False)
        assert path.read_bytes() == b"first"
        assert write_whole(path, b"third", overwrite=True)
        assert path.read_bytes() == b"third"
    assert [p.name for p in local.parent.iterdir()] == ["out.png"]  # no temporary file left behind


@pytest.mark.parametrize("args, words", [
    (["in.jpg", "mask.png", "-o", "out.jpg", "--ray"], "--ray runs folder or manifest mode"),
    (["--composites", "s3://b/c", "--masks", "s3://b/m", "-o", "out"], "s3:// locations are read and written "
                                                                        "by the Ray job: add --ray"),
    (["--composites", "gs://b/c", "--masks", "m", "-o", "out", "--ray"], "only local paths and s3://"),
])
def test_ray_usage_errors_are_one_line(args, words):
    result = run(["harmonize", *args], timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("s2crnet: error: ") and words in lines[0]
