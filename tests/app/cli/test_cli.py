"""The `s2crnet` console script, run for real in a subprocess on crops of the shared iHarmony4 samples.

Outputs are checked against the Python API on the same pixels, using a weights file made here whose random
curve heads give every image (and category) clearly different curves, so a mix-up would show. Nothing assumes
what the shipped weights predict.
"""

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    SAMPLES,
    decode,
    display_p3_icc,
    doc_section,
    encode,
    exif_bytes,
    heif_bytes,
    interrupt_when,
    real_cutout,
    real_pair,
    start_server,
)
from PIL import Image, ImageCms, ImageOps

from model import DEFAULT_WEIGHTS, Harmonizer, ModelConfig, S2CRNet
from model.harmonizer import save_weights

S2CRNET = Path(sys.executable).parent / "s2crnet"
SUMMARY = re.compile(r"(\d+) harmonized, (\d+) skipped \(output exists\), (\d+) failed, (\d+) unpaired")
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(S2CRNET), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def summary_counts(result: subprocess.CompletedProcess) -> tuple[int, ...]:
    match = SUMMARY.search(result.stdout)
    assert match, f"no summary line in stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return tuple(int(n) for n in match.groups())


def assert_one_error_line(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2crnet: error: "), result.stderr
    assert words in lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A semantic model whose curve heads are random and large: curves differ a lot between inputs."""
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(semantic=True))
    for crm in net.crms:
        for projection in (crm.bg_proj, crm.fg_proj):
            torch.nn.init.normal_(projection.weight, std=1.0)
    path = tmp_path_factory.mktemp("weights") / "strong.pt"
    save_weights(path, net, {"note": "cli test weights"})
    return path


@pytest.fixture(scope="module")
def harmonizer(weights) -> Harmonizer:
    return Harmonizer.load(weights, "cpu")


def write_pair(composites: Path, masks: Path, index: int, composite_name: str, mask_name: str,
               size=(320, 240)) -> tuple[int, int]:
    """A real composite/mask pair saved under the given names (sub-folders created); returns the size."""
    composite, mask = real_pair(*size, index=index)
    for folder, name, image in ((composites, composite_name, composite), (masks, mask_name, mask)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, quality=90)
    return composite.size


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


# --- single image -------------------------------------------------------------------------------------------

def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"s2crnet {metadata.version('s2crnet')}"


@pytest.mark.parametrize("extension, fmt, keeps_alpha, lossless", [
    (".jpg", "JPEG", False, False), (".png", "PNG", True, True), (".webp", "WEBP", True, False),
    (".tif", "TIFF", True, True), (".bmp", "BMP", False, True),
])
def test_single_image_in_every_format(tmp_path, harmonizer, weights, extension, fmt, keeps_alpha, lossless):
    composite, mask = real_pair(320, 240, index=1)
    alpha = Image.linear_gradient("L").resize(composite.size)
    composite.putalpha(alpha)
    composite.save(tmp_path / "comp.png", icc_profile=SRGB_ICC)
    mask.save(tmp_path / "mask.png")
    out = tmp_path / f"out{extension}"

    result = run_cli("harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", out,
                     "--weights", weights)

    assert result.returncode == 0, result.stderr
    written = Image.open(out)
    assert written.format == fmt and written.size == composite.size
    assert written.mode == ("RGBA" if keeps_alpha else "RGB")
    if keeps_alpha:
        assert np.array_equal(np.asarray(written.getchannel("A")), np.asarray(alpha))
    if fmt != "BMP":
        assert written.info.get("icc_profile") == SRGB_ICC
    expected = harmonizer.harmonize(composite, mask)
    if not keeps_alpha:
        expected = expected.convert("RGB")
    if not lossless:  # the same encoder at the default quality 95 gives the same pixels
        expected = decode(encode(expected, fmt, quality=95))
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_exif_orientation_is_applied_to_composite_and_mask(tmp_path, harmonizer, weights):
    composite, mask = real_pair(320, 240, index=2)
    # Stored sideways, each with the EXIF tag that turns it upright (6: rotate 90° clockwise, 8: counter-).
    composite.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "comp.jpg", quality=95, exif=exif_bytes(6))
    mask.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "mask.png", exif=exif_bytes(8))

    result = run_cli("harmonize", tmp_path / "comp.jpg", tmp_path / "mask.png", "-o", tmp_path / "out.png",
                     "--weights", weights)

    assert result.returncode == 0, result.stderr
    upright = Image.open(tmp_path / "comp.jpg").transpose(Image.Transpose.ROTATE_270)
    expected = np.asarray(harmonizer.harmonize(upright, mask)).astype(int)
    assert np.array_equal(pixels(tmp_path / "out.png"), expected)


def test_curves_json_and_cube_describe_the_rendered_output(tmp_path, weights):
    composite, mask = real_pair(320, 240, index=3)
    binary = mask.point(lambda v: 255 if v >= 128 else 0)  # hard mask: inside, output = LUT(input) exactly
    composite.save(tmp_path / "comp.png")
    binary.save(tmp_path / "mask.png")

    result = run_cli("harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", tmp_path / "out.png",
                     "--curves", tmp_path / "curves.json", "--cube", tmp_path / "curves.cube",
                     "--weights", weights)

    assert result.returncode == 0, result.stderr
    curves = json.loads((tmp_path / "curves.json").read_text())
    lut = np.array([curves[c] for c in "rgb"])
    assert lut.shape == (3, 256) and lut.min() >= 0 and lut.max() <= 255
    assert (np.diff(lut, axis=1) >= 0).all(), "curves must be monotone"
    assert curves["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    inside = np.asarray(binary) == 255
    source, out = np.asarray(composite).astype(int), pixels(tmp_path / "out.png")
    for c in range(3):
        assert np.array_equal(out[..., c][inside], lut[c][source[..., c][inside]])
        assert np.array_equal(out[..., c][~inside], source[..., c][~inside])

    lines = (tmp_path / "curves.cube").read_text().splitlines()
    assert "LUT_1D_SIZE 256" in lines
    table = [line for line in lines if re.match(r"^[\d.]+ [\d.]+ [\d.]+$", line)]
    rows = np.array([[float(v) for v in line.split()] for line in table])
    assert rows.shape == (256, 3) and rows.min() >= 0 and rows.max() <= 1
    assert np.abs(np.rint(rows.T * 255) - lut).max() == 0


def test_category_and_quality_reach_the_output(tmp_path, harmonizer, weights):
    composite, mask = real_pair(320, 240, index=0)
    composite.save(tmp_path / "comp.png")
    mask.save(tmp_path / "mask.png")
    expected = {}
    for category, quality in (("person", 95), ("animal", 20)):
        out = tmp_path / f"{category}.jpg"
        result = run_cli("harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", out,
                         "--weights", weights, "--category", category, "--quality", quality)
        assert result.returncode == 0, result.stderr
        expected[category] = decode(encode(harmonizer.harmonize(composite, mask, category), quality=quality))
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected[category]))
    assert np.abs(np.asarray(expected["person"]).astype(int) - np.asarray(expected["animal"])).mean() > 1


def test_info_prints_the_model_card(weights):
    text = run_cli("info", "--weights", weights)
    assert text.returncode == 0, text.stderr
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert re.search(rf"^sha256\s+{sha256}$", text.stdout, re.M)
    assert re.search(r"^semantic\s+True$", text.stdout, re.M)
    assert re.search(r"^meta\.note\s+cli test weights$", text.stdout, re.M)
    parameters = sum(p.numel() for p in S2CRNet(ModelConfig(semantic=True)).parameters())
    assert re.search(rf"^parameters\s+{parameters}$", text.stdout, re.M)


def test_info_of_the_shipped_weights_reads_as_a_summary():
    """What a user needs, a line each: no blob of training arguments (that is `--json`'s), numbers rounded."""
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 240 for line in lines), max(lines, key=len)
    assert not any(line.startswith("meta.train_args") for line in lines)
    assert lines[-1] == "(meta.train_args: s2crnet info --json)"
    validation = next(line for line in lines if line.startswith("meta.validation"))
    assert re.search(r"\bmse \d+(\.\d)?,", validation) and "{" not in validation


def test_info_json_defaults_to_the_shipped_weights():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert card["backbone"] == Harmonizer.load(device="cpu").config.backbone


# --- errors: one line, no traceback -------------------------------------------------------------------------

@pytest.fixture
def pair_files(tmp_path) -> tuple[Path, Path]:
    composite, mask = real_pair(96, 64)
    composite.save(tmp_path / "comp.jpg")
    mask.save(tmp_path / "mask.png")
    return tmp_path / "comp.jpg", tmp_path / "mask.png"


@pytest.mark.parametrize("case, words", [
    ("missing composite", "No such file or directory"),
    ("not an image", "cannot identify image file"),
    ("bad weights", "not a valid S2CRNet weights file"),
    ("unknown output format", "cannot tell the output format"),
    ("unknown category", "unknown category 'dragon'"),
    ("empty mask", "the mask selects nothing"),
    ("folder that does not exist", "is not a folder"),
    ("folder without masks", "folder mode takes --composites DIR and --masks DIR"),
    ("output folder is an input folder", "the output folder must differ"),
])
def test_errors_are_one_line_without_traceback(tmp_path, pair_files, case, words):
    composite, mask = pair_files
    out = tmp_path / "out.jpg"
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG")
    black = tmp_path / "black.png"
    Image.new("L", Image.open(composite).size).save(black)
    args = {
        "missing composite": [tmp_path / "nope.jpg", mask, "-o", out],
        "not an image": [garbage, mask, "-o", out],
        "bad weights": [composite, mask, "-o", out, "--weights", garbage],
        "unknown output format": [composite, mask, "-o", tmp_path / "out.xyz"],
        "unknown category": [composite, mask, "-o", out, "--category", "dragon"],
        "empty mask": [composite, black, "-o", out],
        "folder that does not exist": ["--composites", tmp_path / "no", "--masks", tmp_path, "-o", tmp_path],
        "folder without masks": ["--composites", tmp_path, "-o", tmp_path / "o"],
        "output folder is an input folder": ["--composites", tmp_path, "--masks", tmp_path, "-o", tmp_path],
    }[case]

    result = run_cli("harmonize", *args)

    assert_one_error_line(result, words)
    assert not out.exists()


def test_bad_usage_exits_2_with_usage_text(pair_files, tmp_path):
    result = run_cli("harmonize", *pair_files, "-o", tmp_path / "out.jpg", "--quality", "0")
    assert result.returncode == 2
    assert "usage: s2crnet harmonize" in result.stderr and "must be between 1 and 100" in result.stderr


# --- folder mode --------------------------------------------------------------------------------------------

def test_folder_with_good_broken_and_unpaired_files(tmp_path):
    composites, masks, out = tmp_path / "composite_images", tmp_path / "masks", tmp_path / "out"
    good = {  # iHarmony4 names (two composites share one mask) and identical stems
        "a0041_1_5.jpg": write_pair(composites, masks, 0, "a0041_1_5.jpg", "a0041_1.png"),
        "a0041_1_6.jpg": write_pair(composites, masks, 1, "a0041_1_6.jpg", "a0041_1.png"),
        "f1521_1_1.jpg": write_pair(composites, masks, 2, "f1521_1_1.jpg", "f1521_1.png"),
        "same_stem.png": write_pair(composites, masks, 3, "same_stem.png", "same_stem.png", size=(200, 150)),
    }
    write_pair(composites, masks, 4, "garbage_1_1.jpg", "garbage_1.png")
    (composites / "garbage_1_1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    write_pair(composites, masks, 5, "truncated_1_1.jpg", "truncated_1.png")
    whole = (composites / "truncated_1_1.jpg").read_bytes()
    (composites / "truncated_1_1.jpg").write_bytes(whole[: len(whole) // 2])
    write_pair(composites, masks, 6, "wrongsize_1_1.jpg", "wrongsize_1.png")
    Image.new("L", (50, 50), 128).save(masks / "wrongsize_1.png")
    write_pair(composites, tmp_path / "elsewhere", 7, "lonely_1_1.jpg", "lonely_1.png")
    (composites / "notes.txt").write_text("not an image: ignored")

    result = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out, "--jobs", 2,
                     "--batch-size", 2, "--progress")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert summary_counts(result) == (4, 0, 3, 1)
    for name in ("garbage_1_1.jpg", "truncated_1_1.jpg", "wrongsize_1_1.jpg"):
        assert re.search(rf"^s2crnet: failed {name}: ", result.stderr, re.M), result.stderr
    assert re.search(r"^s2crnet: unpaired lonely_1_1.jpg: no mask named lonely_1_1\.\* or lonely_1\.\*",
                     result.stderr, re.M)
    assert re.search(r"\d+/7 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(img/s|s/img)\]", result.stderr), "progress bar"
    assert {path.name: Image.open(path).size for path in out.iterdir()} == good


def test_folder_batches_give_each_image_its_own_curves(tmp_path, harmonizer, weights):
    composites, masks, out = tmp_path / "composites", tmp_path / "masks", tmp_path / "out"
    names = [f"img{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_pair(composites, masks, i, f"{name}.jpg", f"{name}.png")

    result = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out, "--format", "png",
                     "--batch-size", 3, "--jobs", 2, "--weights", weights)

    assert result.returncode == 0, result.stderr
    assert summary_counts(result) == (5, 0, 0, 0)
    for name in names:
        composite, mask = Image.open(composites / f"{name}.jpg"), Image.open(masks / f"{name}.png")
        expected = harmonizer.harmonize(composite, mask)
        # One forward pass for 3 images vs one for 1 may differ in the last float bit: at most one level.
        assert np.abs(pixels(out / f"{name}.png") - np.asarray(expected).astype(int)).max() <= 1, name


def test_folder_resume_skips_existing_outputs(tmp_path):
    composites, masks, out = tmp_path / "composites", tmp_path / "masks", tmp_path / "out"
    for i in range(3):
        write_pair(composites, masks, i, f"c{i}_1_1.jpg", f"c{i}_1.png", size=(128, 96))
    command = ["harmonize", "--composites", composites, "--masks", masks, "-o", out]

    first = run_cli(*command)
    assert first.returncode == 0 and summary_counts(first) == (3, 0, 0, 0), first.stderr
    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    (out / "c1_1_1.jpg").unlink()
    resumed = run_cli(*command)
    assert resumed.returncode == 0 and summary_counts(resumed) == (1, 2, 0, 0), resumed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "c1_1_1.jpg"} == \
        {name: stamp for name, stamp in stamps.items() if name != "c1_1_1.jpg"}
    assert sorted(p.name for p in out.iterdir()) == sorted(stamps)  # nothing left half-written
    redone = run_cli(*command, "--overwrite")
    assert redone.returncode == 0 and summary_counts(redone) == (3, 0, 0, 0), redone.stderr


def test_folder_interrupted_then_resumed(tmp_path):
    composites, masks, out = tmp_path / "composites", tmp_path / "masks", tmp_path / "out"
    count, size = 60, (960, 720)  # seconds of work, so the interrupt lands mid-run even when this process lags
    for i in range(count):
        write_pair(composites, masks, i, f"c{i:02d}.jpg", f"c{i:02d}.png", size=size)
    command = [str(S2CRNET), "harmonize", "--composites", str(composites), "--masks", str(masks),
               "-o", str(out), "--progress", "--batch-size", "2"]
    returncode, stderr = interrupt_when(command, rb"[1-9]\d*/%d \[" % count)  # once the first images are done

    assert returncode == 130, stderr
    assert "s2crnet: interrupted" in stderr and "Traceback" not in stderr
    done = sorted(p.name for p in out.iterdir())
    assert 0 < len(done) < count and all(name.endswith(".jpg") for name in done), "no partial files"
    resumed = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out)
    assert resumed.returncode == 0 and summary_counts(resumed) == (count - len(done), len(done), 0, 0)
    for path in out.iterdir():
        assert Image.open(path).size == size


def test_folder_recursive_mirrors_sub_folders(tmp_path):
    composites, masks, out = tmp_path / "composites", tmp_path / "masks", tmp_path / "out"
    write_pair(composites, masks, 0, "top.jpg", "top.png", size=(128, 96))
    write_pair(composites, masks, 1, "day/a_1_1.jpg", "day/a_1.png", size=(128, 96))

    flat = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out)
    deep = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out, "--recursive")

    assert flat.returncode == 0 and summary_counts(flat) == (1, 0, 0, 0), flat.stderr
    assert deep.returncode == 0 and summary_counts(deep) == (1, 1, 0, 0), deep.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == ["day/a_1_1.jpg", "top.jpg"]


# --- the other subcommands and the README -------------------------------------------------------------------

def test_train_and_eval_options_come_from_their_modules():
    train = run_cli("train", "--help")
    assert train.returncode == 0 and "usage: s2crnet train" in train.stdout and "--steps" in train.stdout
    pytest.importorskip("model.training.evaluate")
    evaluate = run_cli("eval", "--help")
    assert evaluate.returncode == 0 and "usage: s2crnet eval" in evaluate.stdout
    assert "--sheet" in evaluate.stdout


def test_serve_flags_override_environment(weights):
    pytest.importorskip("app.main")
    # The environment names a port nobody listens on; the flags must win for the server to become ready.
    handle = start_server(env={"S2CRNET_PORT": "9", "S2CRNET_WEIGHTS": str(DEFAULT_WEIGHTS)},
                          args=[str(S2CRNET), "serve", "--host", "{host}", "--port", "{port}",
                                "--weights", str(weights), "--device", "cpu"], ready_timeout=90)
    try:
        import httpx

        info = httpx.get(handle.url + "/info", timeout=10)
        assert info.status_code == 200
        assert hashlib.sha256(weights.read_bytes()).hexdigest() in info.text
    finally:
        handle.stop()


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", doc_section("README.md", "python"), re.S)
    assert blocks, "the README's python section needs a ```python block"
    # The example reads ../shared/data from the repository root: give it the same view from a scratch folder.
    workdir = tmp_path / "project"
    workdir.mkdir()
    (tmp_path / "shared").symlink_to(SAMPLES.parents[1], target_is_directory=True)
    (workdir / "example.py").write_text(blocks[0])

    result = subprocess.run([sys.executable, "example.py"], cwd=workdir, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    assert [p.name for p in workdir.iterdir()] == ["example.py"]  # nothing written where it runs
    out = Path(re.search(r"^results in (.+)$", result.stdout, re.M).group(1))
    try:
        written = sorted(p.name for p in out.iterdir())
        assert len(written) == 7, written
        for path in out.iterdir():
            if path.suffix in (".jpg", ".png") and not path.name.startswith("layer_"):  # layers: the cutout's size
                assert Image.open(path).size == Image.open(SAMPLES / "composite_images" / "f1521_1_1.jpg").size
        assert all(Image.open(path).mode == "RGBA" for path in out.glob("layer_*.png"))
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("path", ["README.md", "docs/CLI.md"])
def test_readme_cli_examples_parse(path):
    from app.cli import build_parser

    lines = [line.strip() for line in doc_section(path, "cli").replace("\\\n", " ").splitlines()]
    lines = [line for line in lines if line.startswith("s2crnet ")]
    assert len(lines) >= 5
    for line in lines:
        words = shlex.split(line.split(" #")[0])
        build_parser().parse_args(words[1:])  # exits (SystemExit) on any unknown option


# --- layer input, strength, manifests and reports ---------------------------------------------------------------

@pytest.fixture
def layer_files(tmp_path) -> tuple[Path, Path]:
    """A segmenter-style RGBA cutout and a real background photo, as files."""
    real_cutout(1).save(tmp_path / "fg.png")
    real_pair(480, 360, 2)[0].save(tmp_path / "bg.png")
    return tmp_path / "fg.png", tmp_path / "bg.png"


def test_layer_input_equals_the_python_api(tmp_path, layer_files, harmonizer, weights):
    foreground, background = layer_files
    result = run_cli("harmonize", "--foreground", foreground, "--background", background, "--at=-20,30",
                     "--scale", "0.8", "--feather", "2", "--strength", "0.7", "-o", tmp_path / "out.png",
                     "--weights", weights)
    assert result.returncode == 0, result.stderr
    expected = harmonizer.harmonize(foreground=Image.open(foreground), background=Image.open(background),
                                    at=(-20, 30), scale=0.8, feather=2, strength=0.7)
    assert np.array_equal(pixels(tmp_path / "out.png"), np.asarray(expected).astype(int))
    assert Image.open(tmp_path / "out.png").size == (480, 360)


def test_layer_flag_writes_the_cutout_with_its_own_alpha(tmp_path, layer_files, weights):
    foreground, background = layer_files
    result = run_cli("harmonize", "--foreground", foreground, "--background", background, "--at", "100,40",
                     "--layer", "-o", tmp_path / "layer.png", "--weights", weights)
    assert result.returncode == 0, result.stderr
    layer, cutout = Image.open(tmp_path / "layer.png"), Image.open(foreground)
    assert layer.mode == "RGBA" and layer.size == cutout.size
    assert np.array_equal(np.asarray(layer)[..., 3], np.asarray(cutout)[..., 3])
    assert not np.array_equal(np.asarray(layer)[..., :3], np.asarray(cutout)[..., :3])


def test_strength_zero_writes_the_composite_unchanged(tmp_path, weights):
    composite, mask = real_pair(320, 240, index=4)
    composite.save(tmp_path / "comp.png")
    mask.save(tmp_path / "mask.png")
    for strength, same in (("0", True), ("1", False)):
        out = tmp_path / f"out{strength}.png"
        result = run_cli("harmonize", tmp_path / "comp.png", tmp_path / "mask.png", "-o", out,
                         "--strength", strength, "--weights", weights)
        assert result.returncode == 0, result.stderr
        assert np.array_equal(pixels(out), np.asarray(composite).astype(int)) == same


@pytest.mark.parametrize("case, words", [
    ("lands outside", "--at: the 228×257 foreground at 9000,0 lands entirely outside"),
    ("scale zero", "--scale: must be a number greater than 0"),
    ("box inverted", "--box: needs x1 > x0"),
    ("box and at", "--box: give either --at"),
    ("layer as JPEG", "--layer keeps the foreground's alpha"),
    ("transparent", "--foreground: the matte is fully transparent"),
    ("two forms", "give one input form"),
    ("placement without layers", "--scale place a --foreground on a --background"),
])
def test_layer_errors_are_one_line(tmp_path, layer_files, case, words):
    foreground, background = layer_files
    Image.new("RGBA", (30, 30)).save(tmp_path / "clear.png")
    layer = ["--foreground", foreground, "--background", background]
    args = {
        "lands outside": [*layer, "--at", "9000,0"],
        "scale zero": [*layer, "--scale", "0"],
        "box inverted": [*layer, "--box", "50,0,10,40"],
        "box and at": [*layer, "--box", "0,0,10,40", "--at", "1,1"],
        "layer as JPEG": [*layer, "--layer", "-o", tmp_path / "layer.jpg"],
        "transparent": ["--foreground", tmp_path / "clear.png", "--background", background],
        "two forms": [foreground, background, *layer],
        "placement without layers": [foreground, background, "--scale", "2"],
    }[case]
    if "-o" not in args:
        args += ["-o", tmp_path / "out.png"]
    assert_one_error_line(run_cli("harmonize", *args), words)
    assert not (tmp_path / "out.png").exists()


def _read_report(path: Path) -> dict[str, dict]:
    import csv

    with open(path, newline="") as f:
        return {row["input"]: row for row in csv.DictReader(f)}


def test_layers_manifest_with_a_broken_row(tmp_path, harmonizer, weights):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    (inputs / "cutouts").mkdir(parents=True)
    for i in range(3):
        real_cutout(i, scale=0.5).save(inputs / "cutouts" / f"fg{i}.png")
    real_pair(480, 360, 2)[0].save(inputs / "bg.jpg", quality=95)
    manifest = inputs / "manifest.csv"
    manifest.write_text("foreground,background,x,y,scale,output\n"
                        "cutouts/fg0.png,bg.jpg,10,20,,\n"                   # line 2: default name, JPEG
                        "cutouts/fg1.png,bg.jpg,-30,100,0.5,named/one.png\n"  # line 3: cut off, scaled, named
                        "cutouts/fg2.png,bg.jpg,left,0,,\n"                 # line 4: broken: x is not a number
                        "cutouts/nope.png,bg.jpg,0,0,,\n"                   # line 5: no such file
                        "cutouts/fg2.png,bg.jpg,5000,0,,\n"                 # line 6: lands outside
                        "cutouts/fg2.png,bg.jpg,200,150,1.5,\n")            # line 7
    command = ["harmonize", "--layers", manifest, "-o", out, "--report", tmp_path / "report.csv",
               "--weights", weights, "--batch-size", 2, "--progress"]

    result = run_cli(*command)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert summary_counts(result) == (3, 0, 3, 0)
    assert re.search(r"^s2crnet: failed manifest\.csv:4: x: must be a whole number", result.stderr, re.M)
    assert re.search(r"^s2crnet: failed manifest\.csv:5: No such file or directory", result.stderr, re.M)
    assert re.search(r"^s2crnet: failed manifest\.csv:6: x, y: .* lands entirely outside", result.stderr, re.M)
    assert re.search(r"\d+/5 \[", result.stderr), "progress bar"  # the five rows that parse
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["00001_fg0_on_bg.jpg", "00006_fg2_on_bg.jpg", "named/one.png"]
    expected = harmonizer.harmonize(foreground=Image.open(inputs / "cutouts" / "fg1.png"),
                                    background=Image.open(inputs / "bg.jpg"), at=(-30, 100), scale=0.5)
    assert np.abs(pixels(out / "named" / "one.png") - np.asarray(expected).astype(int)).max() <= 1

    report = _read_report(tmp_path / "report.csv")
    assert {row: report[row]["status"] for row in report} == {
        "manifest.csv:2": "harmonized", "manifest.csv:3": "harmonized", "manifest.csv:4": "failed",
        "manifest.csv:5": "failed", "manifest.csv:6": "failed", "manifest.csv:7": "harmonized"}
    named = report["manifest.csv:3"]
    assert Path(named["output"]) == (out / "named" / "one.png").resolve()
    curves = harmonizer.predict_curves(*[[x] for x in harmonizer.compose(
        Image.open(inputs / "cutouts" / "fg1.png"), Image.open(inputs / "bg.jpg"), at=(-30, 100), scale=0.5)])[0]
    assert float(named["mismatch"]) == pytest.approx(curves.mismatch["mean"], abs=0.01)
    assert float(named["decode_ms"]) > 0 and float(named["infer_ms"]) > 0 and float(named["encode_ms"]) > 0
    assert "whole number" in report["manifest.csv:4"]["error"]

    resumed = run_cli(*command)
    assert resumed.returncode == 1 and summary_counts(resumed) == (0, 3, 3, 0), resumed.stderr
    assert sum(row["status"] == "skipped" for row in _read_report(tmp_path / "report.csv").values()) == 3


def test_layers_manifest_writes_layers(tmp_path, weights):
    real_cutout(0, scale=0.4).save(tmp_path / "fg.png")
    real_pair(320, 240, 1)[0].save(tmp_path / "bg.jpg")
    (tmp_path / "m.csv").write_text("foreground,background,x,y\nfg.png,bg.jpg,5,5\nfg.png,bg.jpg,-40,60\n")
    result = run_cli("harmonize", "--layers", tmp_path / "m.csv", "-o", tmp_path / "out", "--layer",
                     "--feather", "1", "--weights", weights)
    assert result.returncode == 0 and summary_counts(result) == (2, 0, 0, 0), result.stderr
    cutout = Image.open(tmp_path / "fg.png")
    for path in (tmp_path / "out").iterdir():
        layer = Image.open(path)
        assert path.suffix == ".png" and layer.mode == "RGBA" and layer.size == cutout.size
        assert np.array_equal(np.asarray(layer)[..., 3], np.asarray(cutout)[..., 3])


def test_folder_report_has_a_row_per_image(tmp_path, harmonizer, weights):
    composites, masks, out = tmp_path / "composites", tmp_path / "masks", tmp_path / "out"
    for i in range(3):
        write_pair(composites, masks, i, f"c{i}.png", f"c{i}.png", size=(160, 120))
    write_pair(composites, tmp_path / "nowhere", 3, "lonely.png", "lonely.png", size=(160, 120))
    result = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out, "--weights", weights,
                     "--report", tmp_path / "report.csv", "--strength", "0.5")
    assert result.returncode == 1 and summary_counts(result) == (3, 0, 0, 1), result.stderr
    report = _read_report(tmp_path / "report.csv")
    assert report[str((composites / "lonely.png").resolve())]["status"] == "unpaired"
    for i in range(3):
        row = report[str((composites / f"c{i}.png").resolve())]
        assert row["status"] == "harmonized" and Path(row["output"]) == (out / f"c{i}.png").resolve()
        composite, mask = Image.open(composites / f"c{i}.png"), Image.open(masks / f"c{i}.png")
        (curves,) = harmonizer.predict_curves([composite], [mask], strength=0.5)
        for column, key in (("mismatch", "mean"), ("mismatch_r", "r"), ("mismatch_g", "g"), ("mismatch_b", "b")):
            assert float(row[column]) == pytest.approx(curves.mismatch[key], abs=0.01), column


# --- phone photos (HEIC, AVIF) in every mode --------------------------------------------------------------------
def _phone_photo(folder: Path, name: str, index: int, size=(240, 320)) -> tuple[Path, Image.Image, Image.Image]:
    """A HEIC (or AVIF) stored sideways with orientation 6 and a Display P3 profile, as a phone writes it, and
    its upright mask → (path, upright composite as the decoder gives it, mask)."""
    upright, mask = real_pair(*size, index=index)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    path = folder / name
    params = {"exif": exif_bytes(6), "icc_profile": display_p3_icc(), "quality": 95}
    heic = path.suffix.lower() == ".heic"
    path.write_bytes(heif_bytes(stored, **params) if heic else encode(stored, "AVIF", **params))
    decoded = ImageOps.exif_transpose(Image.open(path))  # `import model` registered HEIF: Python reads it too
    assert decoded.size == upright.size
    return path, decoded.convert("RGB"), mask


def test_a_heic_from_a_phone_harmonizes_upright_with_its_profile(tmp_path, harmonizer, weights):
    heic, upright, mask = _phone_photo(tmp_path, "IMG_0042.HEIC", 1)
    mask.save(tmp_path / "mask.png")
    result = run_cli("harmonize", heic, tmp_path / "mask.png", "-o", tmp_path / "out.jpg", "--weights", weights)
    assert result.returncode == 0, result.stderr
    written = Image.open(tmp_path / "out.jpg")
    assert written.size == upright.size and written.info.get("icc_profile") == display_p3_icc()
    expected = decode(encode(harmonizer.harmonize(upright, mask), "JPEG", quality=95))
    assert np.abs(pixels(tmp_path / "out.jpg") - np.asarray(expected).astype(int)).mean() < 1


def test_folder_mode_reads_phone_photos_and_lists_what_it_leaves(tmp_path, weights):
    composites, masks, out = tmp_path / "photos", tmp_path / "masks", tmp_path / "out"
    composites.mkdir()
    masks.mkdir()
    for index, name in enumerate(["IMG_1.heic", "IMG_2.avif"]):
        _phone_photo(composites, name, index)[2].save(masks / f"{Path(name).stem}.png")
    (composites / "notes.txt").write_text("not an image")
    (composites / ".DS_Store").write_bytes(b"\0" * 10)
    result = run_cli("harmonize", "--composites", composites, "--masks", masks, "-o", out, "--weights", weights)
    assert result.returncode == 0, result.stderr
    assert summary_counts(result) == (2, 0, 0, 0)
    assert re.search(r"^s2crnet: ignored notes\.txt: not an image s2crnet reads \(.*\.heic", result.stderr, re.M)
    assert re.search(r"^s2crnet: ignored \.DS_Store: a hidden file$", result.stderr, re.M)
    written = {path.name: (Image.open(path).format, Image.open(path).size) for path in out.iterdir()}
    assert written == {"IMG_1.jpg": ("JPEG", (240, 320)), "IMG_2.avif": ("AVIF", (240, 320))}


def test_a_manifest_places_onto_a_heic_background(tmp_path, weights):
    _phone_photo(tmp_path, "bg.heic", 2)
    real_cutout(0, scale=0.3).save(tmp_path / "fg.png")
    (tmp_path / "m.csv").write_text("foreground,background,x,y\nfg.png,bg.heic,10,20\n")
    result = run_cli("harmonize", "--layers", tmp_path / "m.csv", "-o", tmp_path / "out", "--weights", weights)
    assert result.returncode == 0, result.stderr
    (written,) = (tmp_path / "out").iterdir()
    assert written.suffix == ".jpg" and Image.open(written).size == (240, 320)
    assert Image.open(written).info.get("icc_profile") == display_p3_icc()


@pytest.mark.parametrize(("package", "command", "extra"), [
    ("skimage", ["eval", "somewhere"], "train"),
    ("av", ["harmonize-video", "{clip}", "--mask", "{clip}", "-o", "{out}"], "video"),
])
def test_a_missing_extra_is_named_with_its_pip_install(tmp_path, package, command, extra):
    """Run as if `package` were not installed: one line that names the extra to install."""
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 100)
    args = [a.format(clip=tmp_path / "clip.mp4", out=tmp_path / "out.mp4") for a in command]
    blocked = f"import sys; sys.modules[{package!r}] = None; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", blocked, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert_one_error_line(result, f"'s2crnet {command[0]}' needs the `{extra}` extra: pip install 's2crnet[{extra}]'")


def test_swapped_arguments_are_one_clear_error(tmp_path, weights):
    photo, mask = real_pair(320, 240, 1)
    photo.save(tmp_path / "photo.jpg")
    mask.save(tmp_path / "mask.png")
    result = run_cli("harmonize", tmp_path / "mask.png", tmp_path / "photo.jpg", "-o", tmp_path / "out.jpg",
                     "--weights", weights)
    assert_one_error_line(result, "were the two swapped?")
    assert not (tmp_path / "out.jpg").exists()
