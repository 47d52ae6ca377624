"""Image codecs per stage: Pillow against libjpeg-turbo (simplejpeg) and libvips (pyvips, optional), same images.

    nice -n 15 .venv/bin/python bench/bench_codecs.py [--sides 1024 2048 4096] [--repeats 7]
    (libvips: .venv/bin/pip install pyvips pyvips-binary; without it its columns stay empty)

Stages, each on bench_service.py's real square photo (JPEG q90 + its soft-edged mask), medians in ms,
the libraries interleaved in every repeat so that they share the machine's load:
  decode          bytes → pixels the render can use (Pillow: an Image; simplejpeg: numpy + Image.fromarray;
                  libvips: a memory image, then numpy)
  reduced decode  the thumbnails' source at 1/8 (Pillow draft, simplejpeg's DCT scaling, libvips shrink-on-load)
  render          a LUT applied through the mask (model/curves.py's render; libvips maplut + ifthenelse blend)
  encode          JPEG q95 4:2:0, PNG level 1 (the service's defaults), WebP q95
"""

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import real_square  # noqa: E402

from model.curves import render  # noqa: E402

try:
    import pyvips
except (ImportError, OSError):  # not installed: Pillow and simplejpeg only
    pyvips = None

LUT = np.stack([np.clip(np.arange(256) * 1.15, 0, 255), np.arange(256) * 0.9, np.arange(256)]).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _pillow_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pillow_draft(data: bytes, side: int) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (side // 8, side // 8))
    image.load()
    return image


def _vips_render(data: bytes, mask_data: bytes) -> bytes:
    image, mask = pyvips.Image.new_from_buffer(data, ""), pyvips.Image.new_from_buffer(mask_data, "")
    curved = image.maplut(pyvips.Image.new_from_array(LUT.T[None].copy()).copy(interpretation="srgb")
                          .cast("uchar"))
    blended = (curved * mask + image * (255 - mask) + 127) / 255  # Pillow's rounding
    return blended.cast("uchar").write_to_memory()


def stages(side: int) -> dict[str, dict[str, callable]]:
    jpeg, mask_png = real_square(side)
    image, mask = _pillow_decode(jpeg), _pillow_decode(mask_png)
    array = np.asarray(image)
    png, webp = _save(image, "PNG", compress_level=1), _save(image, "WEBP", quality=95)
    table = {
        "decode JPEG": {"Pillow": lambda: _pillow_decode(jpeg),
                        "simplejpeg": lambda: Image.fromarray(simplejpeg.decode_jpeg(jpeg, colorspace="RGB")),
                        "libvips": lambda: pyvips.Image.new_from_buffer(jpeg, "").write_to_memory()},
        "reduced decode JPEG 1/8": {"Pillow": lambda: _pillow_draft(jpeg, side),
                                    "simplejpeg": lambda: simplejpeg.decode_jpeg(
                                        jpeg, colorspace="RGB", min_width=side // 8, min_height=side // 8),
                                    "libvips": lambda: pyvips.Image.new_from_buffer(jpeg, "", shrink=8)
                                    .write_to_memory()},
        "render (LUT + soft mask), incl. decode for libvips": {
            "Pillow": lambda: render(image.copy(), mask, LUT),
            "libvips": lambda: _vips_render(jpeg, mask_png)},
        "encode JPEG q95": {"Pillow": lambda: _save(image, "JPEG", quality=95),
                            "simplejpeg": lambda: simplejpeg.encode_jpeg(np.asarray(image), quality=95,
                                                                         colorsubsampling="420"),
                            "libvips": lambda: pyvips.Image.new_from_memory(array.tobytes(), side, side, 3, "uchar")
                            .jpegsave_buffer(Q=95, subsample_mode="on")},
        "decode PNG": {"Pillow": lambda: _pillow_decode(png),
                       "libvips": lambda: pyvips.Image.new_from_buffer(png, "").write_to_memory()},
        "encode PNG level 1": {"Pillow": lambda: _save(image, "PNG", compress_level=1),
                               "libvips": lambda: pyvips.Image.new_from_memory(array.tobytes(), side, side, 3,
                                                                               "uchar").pngsave_buffer(compression=1)},
        "decode WebP": {"Pillow": lambda: _pillow_decode(webp),
                        "libvips": lambda: pyvips.Image.new_from_buffer(webp, "").write_to_memory()},
        "encode WebP q95": {"Pillow": lambda: _save(image, "WEBP", quality=95),
                            "libvips": lambda: pyvips.Image.new_from_memory(array.tobytes(), side, side, 3,
                                                                            "uchar").webpsave_buffer(Q=95)},
    }
    if pyvips is None:
        for row in table.values():
            row.pop("libvips", None)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[2048])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if pyvips is not None:
        pyvips.cache_set_max(0)  # no operation cache: every repeat decodes again
    libraries = ("Pillow", "simplejpeg", "libvips")
    sys.stdout.write(f"| stage | side | {' | '.join(libraries)} |\n|---|---|---|---|---|\n")
    for side in args.sides:
        for name, row in stages(side).items():
            times: dict[str, list[float]] = {lib: [] for lib in row}
            for _ in range(args.repeats + 1):
                for lib, fn in row.items():
                    start = time.perf_counter()
                    fn()
                    times[lib].append((time.perf_counter() - start) * 1000)
            cells = [f"{statistics.median(times[lib][1:]):.1f}" if lib in times else "" for lib in libraries]
            sys.stdout.write(f"| {name} | {side}² | {' | '.join(cells)} |\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
