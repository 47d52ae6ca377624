"""Test helpers (`from helpers import real_pair, start_server`): start the real server in a subprocess, and make
real test images.

Start a server (real uvicorn on a free 127.0.0.1 port, waits until GET /readyz answers 200):

    handle = start_server(env={"S2CRNET_MAX_BATCH_SIZE": "1"})
    httpx.get(handle.url + "/healthz")
    handle.stop()                  # SIGTERM, waits for the exit; returns the exit code
    handle.logs                    # everything the server wrote to stdout and stderr so far

    # Any command line: "{host}" and "{port}" are filled in; .venv/bin is first on PATH.
    start_server(args=["s2crnet", "serve", "--host", "{host}", "--port", "{port}"])

The session-scoped `server` fixture (conftest.py) is one server with the default settings, shared by every test
that only reads from it. Tests that change settings or send signals start their own with `start_server`.

Real images (crops of the real photos in ../shared/data, never synthetic noise):

    composite, mask = real_pair(512, 384)          # PIL RGB + PIL L, mask has foreground and background
    data = encode(composite, "JPEG", quality=90)   # bytes
    response = post_image(handle.url, data, encode(mask, "PNG"), fields={"format": "png"})
"""

import csv
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.iharmony import mask_stem

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SAMPLES = DATA / "iharmony4_samples"
REAL_VAL = DATA / "iharmony4_val"  # real composites for choosing weights; never trained on
PHOTOS = DATA / "photos"
DEFAULT_SERVER_ARGS = [sys.executable, "-m", "app"]  # app.main.run: uvicorn plus the drain on SIGTERM


def read_http_answer(sock: socket.socket, answer: bytes = b"", timeout: float = 30.0) -> bytes:
    """Read a raw HTTP/1.1 answer from `sock` until its head and Content-Length body are in (or EOF, timeout)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head, separator, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.I)
        if separator and (length is None or len(body) >= int(length.group(1))):
            break
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        answer += data
    return answer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    """A server process from `start_server`. Its output goes to a file (a pipe could fill up and block it)."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.running:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit; kills the process (and fails the test) if it does not end within `timeout`."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"server did not exit within {timeout} s; logs:\n{self.logs[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode
                raise RuntimeError(f"server exited with {code}; logs:\n{self.logs[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"server not ready within {timeout} s; logs:\n{self.logs[-4000:]}")


def start_server(env: dict | None = None, args: list[str] | None = None, *, host: str = "127.0.0.1",
                 ready_timeout: float = 120.0, wait_ready: bool = True) -> ServerHandle:
    """Start the server in a subprocess on a free port of `host` and (by default) wait until /readyz is 200.

    env: extra environment variables (on top of os.environ without its S2CRNET_* variables, so a developer's
    shell cannot change the tests, plus S2CRNET_HOST and S2CRNET_PORT).
    args: the command line (default `python -m app`); "{host}" and "{port}" in it are replaced.
    The caller stops it (`handle.stop()`); a failed start raises RuntimeError with the server's logs.
    """
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("S2CRNET_")}
    full_env = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "S2CRNET_HOST": host,
        "S2CRNET_PORT": str(port),
        **(env or {}),
    }
    command = [a.replace("{host}", host).replace("{port}", str(port)) for a in (args or DEFAULT_SERVER_ARGS)]
    log_fd, log_name = tempfile.mkstemp(prefix="s2crnet-server-", suffix=".log")
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log_fd, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    os.close(log_fd)
    handle = ServerHandle(f"http://{host}:{port}", port, process, Path(log_name), command)
    weakref.finalize(handle, _clean_up, process, Path(log_name))  # at the latest when pytest exits
    if wait_ready:
        handle.wait_ready(ready_timeout)
    return handle


def _clean_up(process: subprocess.Popen, log_path: Path) -> None:
    """No server outlives its test session, and no log file stays behind in /tmp."""
    if process.poll() is None:
        process.kill()
        process.wait(10)
    log_path.unlink(missing_ok=True)


def interrupt_when(command: list[str], pattern: bytes, timeout: float = 60) -> tuple[int, str]:
    """Run `command` (from the repository root), send SIGINT once its stderr matches `pattern` (say, a progress
    bar past its first item), wait → (exit code, all of its stderr)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while not re.search(pattern, seen):
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"the run ended before it could be interrupted: {seen.decode(errors='replace')}"
        seen += chunk
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, (seen + stderr).decode(errors="replace")


def logs_with(handle: "ServerHandle", text: str, timeout: float = 10.0) -> str:
    """The server's logs once they contain `text`: a request's access line is written after its answer is sent,
    so a client can read the answer before the line exists."""
    deadline = time.monotonic() + timeout
    while text not in handle.logs and time.monotonic() < deadline:
        time.sleep(0.05)
    return handle.logs


def doc_section(path: str, name: str) -> str:
    """The text of `<!-- section: NAME -->` in the repository file `path`, up to the next section marker."""
    text = (REPO / path).read_text()
    start = text.index(f"<!-- section: {name} -->")
    end = text.find("<!-- section:", start + 1)
    return text[start: end if end != -1 else None]


# --- real images ----------------------------------------------------------------------------------------
def sample_names() -> list[str]:
    """The iHarmony4 sample composites, e.g. 'a0041_1_5' (their masks are masks/a0041_1.png)."""
    return sorted(p.stem for p in (SAMPLES / "composite_images").glob("*.jpg"))


@functools.lru_cache(maxsize=16)
def _source(index: int, longest: int) -> tuple[Image.Image, Image.Image]:
    name = sample_names()[index % len(sample_names())]
    image = Image.open(SAMPLES / "composite_images" / f"{name}.jpg")
    image.draft("RGB", (longest, longest))  # JPEG DCT scaling: opening the 17 MP samples stays fast
    image = image.convert("RGB")
    mask = Image.open(SAMPLES / "masks" / f"{mask_stem(name)}.png").convert("L")
    return image, mask.resize(image.size, Image.Resampling.NEAREST)


def real_pair(width: int, height: int, index: int = 0) -> tuple[Image.Image, Image.Image]:
    """A real composite (RGB) and its mask (L) at exactly width×height: the sample scaled to cover the size
    and cropped around its object, so the mask holds both foreground and background."""
    image, mask = _source(index, max(width, height))
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    mask = mask.resize(size, Image.Resampling.BILINEAR)
    left, top, right, bottom = mask.getbbox()
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x0 = min(max(cx - width // 2, 0), size[0] - width)
    y0 = min(max(cy - height // 2, 0), size[1] - height)
    box = (x0, y0, x0 + width, y0 + height)
    image, mask = image.crop(box), mask.crop(box)
    low, high = mask.getextrema()
    if high == 0 or low == 255:  # a tiny crop can miss the object's edge: its left half becomes the object
        array = np.zeros((height, width), np.uint8)
        array[:, : max(1, width // 2)] = 255
        array[-1, -1] = 0  # a 1-pixel-wide crop still needs one background pixel
        mask = Image.fromarray(array, "L")
    return image, mask


def photo_pair(index: int = 0) -> tuple[Image.Image, Image.Image]:
    """A real photo and its object mask from ../shared/data/photos (small: 256² to 640×480)."""
    with open(PHOTOS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    row = rows[index % len(rows)]
    return (Image.open(PHOTOS / row["image"]).convert("RGB"),
            Image.open(PHOTOS / row["mask"]).convert("L"))


def photo_composites(composites: Path, masks: Path, count: int, longest: int = 96) -> list[str]:
    """`count` small composites made from the real photos (cycling through them): each scaled to `longest` px,
    its object recoloured by a per-image channel gain, saved as JPEG (every fifth as PNG) beside its PNG mask
    of the same stem → the composites' file names."""
    with open(PHOTOS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    composites.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        row = rows[i % len(rows)]
        image = Image.open(PHOTOS / row["image"]).convert("RGB")
        image.thumbnail((longest, longest), Image.Resampling.BILINEAR)
        mask = Image.open(PHOTOS / row["mask"]).convert("L").resize(image.size, Image.Resampling.NEAREST)
        pixels = np.asarray(image, dtype=np.float32)
        gain = rng.uniform(0.6, 1.4, 3).astype(np.float32)
        inside = np.asarray(mask)[..., None] > 127
        pixels = np.where(inside, np.clip(pixels * gain, 0, 255), pixels)
        name = f"photo{i:04d}.{'png' if i % 5 == 4 else 'jpg'}"
        Image.fromarray(pixels.astype(np.uint8)).save(composites / name, quality=90)
        mask.save(masks / f"photo{i:04d}.png")
        names.append(name)
    return names


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def exif_bytes(orientation: int) -> bytes:
    """An EXIF block holding only the Orientation tag (1-8): pass as `exif=` to Image.save."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def display_p3_icc() -> bytes:
    """A Display P3 ICC profile (v2, matrix + 2.2 gamma curves, D50-adapted P3 primaries; 'Display P3' as its
    description), as phones tag their photos: built here, since no package ships one."""
    import struct

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    description = b"Display P3\0"
    tags = {
        b"desc": b"desc" + b"\0" * 4 + struct.pack(">I", len(description)) + description + b"\0" * 79,
        b"cprt": b"text" + b"\0" * 4 + b"No copyright\0",
        b"wtpt": xyz(0.964203, 1.0, 0.824905),
        b"rXYZ": xyz(0.515121, 0.241196, -0.001053),
        b"gXYZ": xyz(0.291977, 0.692245, 0.041885),
        b"bXYZ": xyz(0.157104, 0.066574, 0.784073),
    }
    gamma = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags.update({b"rTRC": gamma, b"gTRC": gamma, b"bTRC": gamma})
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags.items():
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x40, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"APPL" + b"\0" * 24 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


def heif_bytes(image: Image.Image, **params) -> bytes:
    """`image` encoded as HEIC by pillow-heif's x265 encoder (params: exif=, icc_profile=, quality=, ...)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(image, "HEIF", **params)


def post_image(url: str, composite: bytes, mask: bytes, fields: dict | None = None,
               endpoint: str = "/harmonize", headers: dict | None = None, timeout: float = 60.0,
               client: httpx.Client | None = None, names: tuple[str, str] = ("comp.jpg", "mask.png"),
               ) -> httpx.Response:
    """POST composite + mask (+ form fields) as multipart/form-data to endpoint; returns the response."""
    files = {"composite": (names[0], composite, "application/octet-stream"),
             "mask": (names[1], mask, "application/octet-stream")}
    send = client.post if client is not None else httpx.post
    return send(url + endpoint, files=files, data=fields or {}, headers=headers or {}, timeout=timeout)


def real_cutout(index: int = 0, scale: float = 1.0) -> Image.Image:
    """A segmenter-style RGBA cutout from a real photo: the crop around its object mask, alpha = that mask, and
    black where the alpha is 0 (as rembg leaves it)."""
    photo, mask = photo_pair(index)
    left, top, right, bottom = mask.getbbox()
    box = (max(left - 4, 0), max(top - 4, 0), min(right + 4, photo.width), min(bottom + 4, photo.height))
    rgb, alpha = photo.crop(box), mask.crop(box)
    if scale != 1.0:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb, alpha = rgb.resize(size, Image.Resampling.BILINEAR), alpha.resize(size, Image.Resampling.BILINEAR)
    cutout = Image.composite(rgb, Image.new("RGB", rgb.size), alpha)
    cutout.putalpha(alpha)
    return cutout


# --- tiny training data ---------------------------------------------------------------------------------
def photo_and_mask(seed: int = 0, size: int = 64):
    rng = np.random.default_rng(seed)
    with Image.open(SAMPLES / "real_images" / "f1380.jpg") as im:
        real = np.asarray(im.convert("RGB").resize((size, size)))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 5: size // 2] = 255
    mask[size // 4, size // 5: size // 2] = 128  # a soft edge row
    return rng, real, mask


def tiny_manifest(tmp_path, n: int = 12):
    """A manifest of small crops of the real shared photos, so data loading takes milliseconds."""
    with (PHOTOS / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    (tmp_path / "img").mkdir()
    for row in rows:
        stem = row["id"].replace("/", "_")
        with Image.open(PHOTOS / row["image"]) as im:
            im.convert("RGB").resize((64, 64)).save(tmp_path / "img" / f"{stem}.jpg")
        with Image.open(PHOTOS / row["mask"]) as im:
            im.convert("L").resize((64, 64)).save(tmp_path / "img" / f"{stem}.png")
        row["image"], row["mask"] = f"img/{stem}.jpg", f"img/{stem}.png"
        row["id"] = f"tiny/{stem}"
    return write_manifest(tmp_path / "manifest.csv", rows)


def write_manifest(path, rows: list[dict]):
    """A photo manifest (../shared/data/photos/manifest.csv's columns) with these rows."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_iharmony_fixture(root, n: int = 3):
    for sub in ("composite_images", "masks", "real_images"):
        (root / sub).mkdir(parents=True)
    names = []
    for i in range(n):
        _, real, mask = photo_and_mask(i, 48)
        composite = real.copy()
        composite[mask > 0] = np.clip(composite[mask > 0].astype(int) + 40, 0, 255)
        Image.fromarray(real).save(root / "real_images" / f"a{i:04d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"a{i:04d}_1.png")
        Image.fromarray(composite).save(root / "composite_images" / f"a{i:04d}_1_{i + 1}.jpg")
        names.append(f"a{i:04d}_1_{i + 1}.jpg")
    (root / "IHD_test.txt").write_text("\n".join(names) + "\n")
    (root / "labels.txt").write_text(f"{names[0]} person 0\n")
    return names


# --- generated video clips ------------------------------------------------------------------------------------
def clip_frames(count: int = 30, size: tuple[int, int] = (160, 96), photo: int = 0, jitter: float = 0.04,
                cast: tuple[float, float, float] = (1.25, 1.0, 0.7), cut_at: int | None = None, cut_photo: int = 2,
                seed: int = 0):
    """A real photo under a slow pan and zoom, its object under a constant colour cast, the background's
    brightness jittering by ±`jitter` from frame to frame (which makes per-frame curves jump) → per frame
    (composite, mask, truth), uint8 numpy (H, W, 3), (H, W), (H, W, 3). The truth is the same frame without the
    cast. From `cut_at` on the frames come from photo `cut_photo`: a scene cut."""
    rng = np.random.default_rng(seed)
    width, height = size
    for index in range(count):
        image, mask = photo_pair(cut_photo if cut_at is not None and index >= cut_at else photo)
        t = index / max(count - 1, 1)
        zoom = 0.95 - 0.2 * t  # share of the photo the window covers
        box_w = min(image.width, image.height * width / height) * zoom
        box_h = box_w * height / width
        x0 = (image.width - box_w) * (0.3 + 0.4 * t)  # pan left to right
        y0 = (image.height - box_h) * 0.5
        box = (x0, y0, x0 + box_w, y0 + box_h)
        crop = np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box), np.float64)
        matte = np.asarray(mask.resize(size, Image.Resampling.BILINEAR, box=box), np.float64)[..., None] / 255
        gain = 1.0 + rng.uniform(-jitter, jitter)
        truth = crop * matte + np.clip(crop * gain, 0, 255) * (1 - matte)
        composite = np.clip(crop * np.asarray(cast), 0, 255) * matte + truth * (1 - matte)
        yield (np.rint(composite).astype(np.uint8), np.rint(matte[..., 0] * 255).astype(np.uint8),
               np.rint(truth).astype(np.uint8))


def write_video(path, frames, rate=25, audio: bool = True, crf: int = 18, rotation: int = 0,
                aspect: Fraction | None = None, times_ms: list[int] | None = None) -> int:
    """Encode RGB (H, W, 3) or grey (H, W) uint8 frames as H.264 (yuv420p) in `path`'s container, with a stereo
    AAC tone as long as the video when `audio`; frames are numbered 0, 1, ... in a 1/rate time base, or stamped
    `times_ms` (variable frame rate). `rotation` (degrees) and `aspect` (pixel aspect) are written as metadata.
    Returns the frame count."""
    import av

    rate = Fraction(rate)
    count = 0
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.options = {"crf": str(crf)}
        if times_ms is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        if aspect is not None:
            video.codec_context.sample_aspect_ratio = aspect
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=48000) if audio else None
        for pixels in frames:
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[..., None], 3, axis=-1)
            if count == 0:
                video.width, video.height, video.pix_fmt = pixels.shape[1], pixels.shape[0], "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = count if times_ms is None else times_ms[count]
            out.mux(video.encode(frame))
            count += 1
        out.mux(video.encode(None))
        if sound is not None:
            seconds = count / rate if times_ms is None else (times_ms[-1] + 1000 / rate) / 1000
            samples = int(seconds * 48000)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start:start + 1024]
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return count


def make_clip(folder, name: str = "clip", rate=25, audio: bool = True, video_options: dict | None = None,
              **frames_options):
    """A generated clip (clip_frames) written to folder/NAME.mp4 and its mask to folder/NAME_mask.mp4 →
    (video path, mask path, masks list, ground-truth frames list). video_options: more write_video keywords."""
    folder = Path(folder)
    frames = list(clip_frames(**frames_options))
    video, mask = folder / f"{name}.mp4", folder / f"{name}_mask.mp4"
    write_video(video, (c for c, _, _ in frames), rate, audio, **(video_options or {}))
    write_video(mask, (m for _, m, _ in frames), rate, audio=False)
    return video, mask, [m for _, m, _ in frames], [t for _, _, t in frames]


def video_frames(path) -> list[np.ndarray]:
    """Every frame of the first video stream, RGB uint8."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decode_with_errors(path) -> tuple[list[int], list[str]]:
    """Decode every frame of the first video stream → (their pts, FFmpeg's error messages while demuxing and
    decoding, such as "reference picture missing"). An empty error list is a file that decodes cleanly."""
    import av
    import av.logging

    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV passes FFmpeg's log on only from a set level
    try:
        with av.logging.Capture() as logs, av.open(str(path)) as container:
            pts = [frame.pts for frame in container.decode(video=0)]
    finally:
        av.logging.set_level(level)
    return pts, [f"{name}: {message.strip()}" for severity, name, message in logs if severity <= av.logging.ERROR]


def video_timing(path) -> dict:
    """What the output must keep: rate, time base, every frame's pts, duration, size, aspect, rotation, audio."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = list(container.decode(video))
        container.seek(0)
        audio = [(p.pts, p.dts, bytes(p)) for p in container.demux(*container.streams.audio) if p.dts is not None]
        return {"rate": video.average_rate, "time_base": video.time_base, "pts": [f.pts for f in frames],
                "duration": container.duration, "size": (video.width, video.height),
                "aspect": video.sample_aspect_ratio, "rotation": frames[0].rotation, "audio": audio}


# --- model fixtures ------------------------------------------------------------------------------------------
def identity_net():
    """A fresh S2CRNet whose curves are exactly the identity: every CRM projection (so every log-slope) is 0."""
    import torch

    from model import ModelConfig, S2CRNet

    net = S2CRNet(ModelConfig())
    with torch.no_grad():
        for crm in net.crms:
            for projection in (crm.bg_proj, crm.fg_proj):
                projection.weight.zero_()
                projection.bias.zero_()
    return net


def shipped_weights_with_onnx(folder: Path) -> Path:
    """The shipped weights copied into `folder`, with their ONNX export beside them (as the onnx runtime finds it)."""
    import shutil

    from model import DEFAULT_WEIGHTS
    from model.onnx_export import export_onnx

    weights = folder / "s2crnet.pt"
    shutil.copyfile(DEFAULT_WEIGHTS, weights)
    export_onnx(weights, weights.with_suffix(".onnx"))
    return weights
