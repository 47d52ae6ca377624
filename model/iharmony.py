"""iHarmony4's layout and naming: the one home of the rule that pairs a composite with its mask and real photo.

A composite is named ID_OBJECT_VARIANT (`a0041_1_5.jpg`): its mask is ID_OBJECT (`masks/a0041_1.png`) and its real
photo ID (`real_images/a0041.jpg`). The first letter names the subset. `labels.txt` (optional) gives each composite
a semantic class as the S²CRNet authors used them.
"""

import re
from pathlib import Path

from .config import UNKNOWN

__all__ = ["COMPOSITE_NAME", "IHARMONY_LABELS", "SUBSETS", "mask_stem", "read_iharmony_labels", "read_iharmony_split",
           "real_stem"]

SUBSETS = {"a": "HAdobe5k", "c": "HCOCO", "d": "Hday2night", "f": "HFlickr"}
# labels.txt classes → our category names
IHARMONY_LABELS = {"person": "person", "animal": "animal", "food": "other", "others": "other"}


# ID_OBJECT_VARIANT, the object and variant numbers: a0041_1_5, d18478-20120526-021926_1_2
COMPOSITE_NAME = re.compile(r"^(?P<mask>(?P<real>.+)_\d+)_\d+$")


def _match(composite_stem: str) -> re.Match:
    match = COMPOSITE_NAME.match(composite_stem)
    if match is None:
        raise ValueError(f"composite name {composite_stem!r} does not follow iHarmony4's ID_OBJECT_VARIANT naming")
    return match


def mask_stem(composite_stem: str) -> str:
    """a0041_1_5 → a0041_1"""
    return _match(composite_stem)["mask"]


def real_stem(composite_stem: str) -> str:
    """a0041_1_5 → a0041"""
    return _match(composite_stem)["real"]


def read_iharmony_split(root: str | Path, split: str = "test") -> list[tuple[str, Path, Path, Path]]:
    """(name, composite, mask, real) for an iHarmony4-format folder; `split` picks *_{split}.txt or test.txt."""
    root = Path(root)
    lists = sorted(root.glob(f"*_{split}.txt")) or sorted(root.glob(f"{split}.txt"))
    if lists:
        names = [line.split()[0] for f in lists for line in f.read_text().splitlines() if line.strip()]
    else:
        names = sorted(p.name for p in (root / "composite_images").iterdir())
    items = []
    for entry in names:
        name = Path(entry).name
        stem = Path(name).stem
        try:
            mask, real = _find(root / "masks", mask_stem(stem)), _find(root / "real_images", real_stem(stem))
        except ValueError as e:
            raise ValueError(f"{root}: {e}") from e
        items.append((name, root / "composite_images" / name, mask, real))
    return items


def _find(folder: Path, stem: str) -> Path:
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        if (folder / (stem + ext)).exists():
            return folder / (stem + ext)
    raise ValueError(f"missing {folder / stem}.*")


def read_iharmony_labels(root: str | Path) -> dict[str, str]:
    path = Path(root) / "labels.txt"
    if not path.exists():
        return {}
    labels = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            labels[parts[0]] = IHARMONY_LABELS.get(parts[1], UNKNOWN)
    return labels


