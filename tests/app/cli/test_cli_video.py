"""`s2crnet harmonize-video`, run for real in a subprocess on generated clips (H.264 + AAC, tests/helpers)."""

import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import REPO, decode_with_errors, interrupt_when, make_clip, real_cutout, video_frames, video_timing

S2CRNET = Path(sys.executable).parent / "s2crnet"
SUMMARY = re.compile(r"(\d+) frames \((\d+) shots?, (\d+) curve predictions\) in [\d.]+ s \([\d.]+ frames/s\)")


def run_video(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(S2CRNET), "harmonize-video", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit code 1 and exactly one `s2crnet: error:` line → that line."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2crnet: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 29.97 fps clip with sound and its mask video."""
    return make_clip(tmp_path_factory.mktemp("clip"), rate=Fraction(30000, 1001), count=20)


def test_composite_clip_keeps_rate_frames_and_sound(clip, tmp_path):
    video, mask, _, _ = clip
    out = tmp_path / "out.mp4"
    result = run_video(video, "--mask", mask, "-o", out, "--curves-every", "2", "--smoothing", "0.3")
    assert result.returncode == 0, result.stderr
    assert SUMMARY.search(result.stdout).groups() == ("20", "1", "11")
    assert video_timing(out) == video_timing(video)
    assert len(video_frames(out)) == 20


def test_mask_with_another_frame_count_is_one_clear_error(clip, tmp_path):
    video, _, _, _ = clip
    short = make_clip(tmp_path, name="short", count=12, audio=False)[1]
    out = tmp_path / "out.mp4"
    assert "mask: 12 frames, but the input has 20" in one_error(run_video(video, "--mask", short, "-o", out))
    assert list(tmp_path.glob("out*")) == []


@pytest.mark.parametrize(("setup", "words"), [
    ("garbage", "input: cannot read"),
    ("codec", "no 'nosuchcodec' encoder"),
    ("missing", "does not exist"),
])
def test_bad_input_or_codec_is_one_clear_error(clip, tmp_path, setup, words):
    video, mask, _, _ = clip
    args = [video, "--mask", mask, "-o", tmp_path / "out.mp4"]
    if setup == "garbage":
        args[0] = tmp_path / "garbage.mp4"
        args[0].write_bytes(b"not a video at all" * 100)
    elif setup == "codec":
        args += ["--codec", "nosuchcodec"]
    else:
        args[2] = tmp_path / "nowhere.mp4"
    assert words in one_error(run_video(*args))
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.partial.mp4").exists()


def test_layer_form_from_frames_on_an_image(tmp_path):
    folder = tmp_path / "fg"
    folder.mkdir()
    for i in range(8):
        real_cutout(0, scale=0.2 + 0.01 * i).save(folder / f"f{i}.png")
    background = tmp_path / "bg.jpg"
    real_cutout(2).convert("RGB").resize((160, 96)).save(background)
    out = tmp_path / "layer.mp4"
    result = run_video("--foreground", folder, "--background", background, "--at", "20,10", "--fps", "30000/1001",
                       "-o", out)
    assert result.returncode == 0, result.stderr
    timing = video_timing(out)
    assert timing["rate"] == Fraction(30000, 1001) and len(timing["pts"]) == 8 and timing["size"] == (160, 96)


def test_interrupt_leaves_a_playable_partial_file(tmp_path):
    video, mask, _, _ = make_clip(tmp_path, count=90)
    out = tmp_path / "out.mp4"
    command = [str(S2CRNET), "harmonize-video", str(video), "--mask", str(mask), "-o", str(out), "--progress"]
    returncode, stderr = interrupt_when(command, rb"[1-9]\d*/90 \[")  # once the first frames are done
    assert returncode == 130, stderr
    partial = tmp_path / "out.partial.mp4"
    assert "s2crnet: interrupted: the first" in stderr and f"frames are in {partial} (playable)" in stderr, stderr
    assert not out.exists() and "Traceback" not in stderr
    reported = int(re.search(r"the first (\d+) frames", stderr).group(1))
    pts, errors = decode_with_errors(partial)
    assert errors == [] and 0 < len(pts) == reported < 90
    assert pts == video_timing(video)["pts"][:reported]
