"""The service's thumbnails from a reduced JPEG decode against the full-size ones that Harmonizer.prepare (the
CLI, the Python API, training and evaluation) builds, on the real composites.

    nice -n 15 .venv/bin/python bench/thumbnail_luts.py

For each composite of ../shared/data/iharmony4_samples (10, with real images) and iharmony4_val (18): the LUT
levels between the two paths' curves (max over channels and levels), the rendered image's largest difference,
and, where the real image exists, the foreground MSE of both renders (model/training/evaluate.py's score at its
eval size). The reduced path is the service's own (app/pipeline.py), reduced size printed.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import imaging  # noqa: E402
from app.pipeline import _thumbnails_from_reduced  # noqa: E402
from model import Harmonizer  # noqa: E402
from model.iharmony import mask_stem  # noqa: E402
from model.inputs import open_upright  # noqa: E402
from model.thumbnails import reduced_scale  # noqa: E402
from model.training.evaluate import _small, score  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    harmonizer = Harmonizer.load(device="cpu")
    service = SimpleNamespace(harmonizer=harmonizer)
    sys.stdout.write("| composite | size | reduced decode (≥ width: decoded finer) | LUT max diff | render max diff "
                     "| fg MSE full / reduced |\n|---|---|---|---|---|---|\n")
    worst, mses = 0, []
    for folder in ("iharmony4_samples", "iharmony4_val"):
        for path in sorted((DATA / folder / "composite_images").glob("*.jpg")):
            mask = imaging.decode(str(DATA / folder / "masks" / f"{mask_stem(path.stem)}.png"), "mask", None, False)
            data = path.read_bytes()
            image, mask_image, thumbs = harmonizer.prepare(imaging.decode(data, "composite", None, True).image,
                                                           mask.image)
            opened = imaging.open_image(data, "composite", None)
            reduced = imaging.decode_reduced(opened, "composite", reduced_scale(opened.size, None,
                                                                                 harmonizer.config.thumb))
            _, reduced_thumbs = _thumbnails_from_reduced(service, opened, reduced, mask)
            full, fast = harmonizer.curves_from_thumbnails([thumbs, reduced_thumbs])
            lut_diff = int(np.abs(full.lut().astype(int) - fast.lut().astype(int)).max())
            outputs = [np.asarray(harmonizer.render(image.copy(), mask_image, c)) for c in (full, fast)]
            render_diff = int(np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max())
            real_path = DATA / folder / "real_images" / f"{path.stem.split('_')[0]}.jpg"
            fg_mse = ""
            if real_path.exists():
                real, fg = _small(open_upright(real_path, "RGB")), _small(mask_image) > 127
                pair = [score(_small_array(o), real, fg)["fmse"] for o in outputs]
                mses.append(pair)
                fg_mse = f"{pair[0]:.1f} / {pair[1]:.1f}"
            worst = max(worst, lut_diff)
            scale = reduced_scale(image.size, mask_image.getbbox(), harmonizer.config.thumb)  # what the service read
            read = reduced.image.size if scale * image.width <= reduced.image.width else (scale * image.width,)
            sys.stdout.write(f"| {path.stem} | {image.width}×{image.height} | {'×'.join(f'{v:.0f}' for v in read)} "
                             f"| {lut_diff} | {render_diff} | {fg_mse} |\n")
    mean = np.mean(mses, axis=0)
    sys.stdout.write(f"\nLUT max difference over all: {worst} levels; mean foreground MSE of the samples: "
                     f"full {mean[0]:.2f}, reduced {mean[1]:.2f}\n")


def _small_array(array: np.ndarray) -> np.ndarray:
    from PIL import Image
    return _small(Image.fromarray(array))


if __name__ == "__main__":
    main()
