"""Model configuration, saved inside every weights file so loading rebuilds the exact network."""

from dataclasses import asdict, dataclass, field, fields, replace

__all__ = ["CATEGORIES", "DEVICES", "UNKNOWN", "ModelConfig", "PAPER_CONFIG"]

DEVICES = ("auto", "cpu", "cuda")  # where the network runs; "auto": a CUDA GPU when there is one
UNKNOWN = "unknown"
# The coarse foreground classes the shared training photos carry; "unknown" is the fallback for anything else.
CATEGORIES = (
    "person", "animal", "vehicle", "building", "sky", "vegetation", "water", "terrain", "other", UNKNOWN,
)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "squeezenet"  # registered backbone name (model.backbones)
    thumb: int = 128  # square thumbnail side fed to the backbone (the paper uses 256; 128 fits 2 hours of CPU training)
    pieces: int = 64  # linear pieces per colour curve (L in the paper)
    stages: int = 2  # cascaded CRMs, each refining the previous stage's output
    semantic: bool = False  # Semantic-CRM: a foreground category embedding joins the foreground features
    categories: tuple[str, ...] = field(default=CATEGORIES)  # vocabulary of the category embedding
    norm: str = "batch"  # extension: normalisation in the backbone ("batch" or "none" = the paper)
    color_stats: bool = True  # extension: per-channel colour statistics appended to each embedding
    head_hidden: int = 256  # extension: a hidden ReLU layer of this width beside each CRM's linear maps (0 = paper)
    seam_stats: bool = True  # extension: how colours jump across the mask's edge, appended to the bg embedding
    strength: float = 1.0  # share of the curves' change applied, (1 − s)·x + s·C(x); fitted by `s2crnet calibrate`

    def __post_init__(self):
        if self.thumb < 32 or self.pieces < 2 or self.stages < 1 or self.head_hidden < 0:
            raise ValueError(f"invalid model config: thumb={self.thumb}, pieces={self.pieces}, "
                             f"stages={self.stages}, head_hidden={self.head_hidden}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}")
        if UNKNOWN not in self.categories:
            raise ValueError(f"categories must include {UNKNOWN!r}")
        object.__setattr__(self, "categories", tuple(self.categories))

    def check_category(self, category: str | None) -> str | None:
        """`category` if this model knows it (None stays None = unknown); ValueError naming the known ones else."""
        if category is not None and category not in self.categories:
            raise ValueError(f"unknown category {category[:64]!r}; this model knows: {', '.join(self.categories)}")
        return category

    def category_index(self, category: str | None) -> int:
        """The index of `category` in the vocabulary (None = unknown)."""
        return self.categories.index(self.check_category(category) or UNKNOWN)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{"seam_stats": False} | d)  # files written before seam_stats existed do not have it


# The network exactly as the paper describes it: no normalisation layers, no colour or seam statistics, linear
# CRMs, 256² thumbs.
PAPER_CONFIG = replace(ModelConfig(), thumb=256, norm="none", color_stats=False, head_hidden=0, seam_stats=False)
