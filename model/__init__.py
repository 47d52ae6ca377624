"""S²CRNet image harmonization: network, curve rendering and the `Harmonizer` API.

`S2CRNet` and `count_parameters` (PyTorch) are imported on first use, so `import model` and the onnx runtime
work without torch installed.
"""

from .config import CATEGORIES, PAPER_CONFIG, ModelConfig
from .curves import Curves
from .harmonizer import DEFAULT_WEIGHTS, Harmonizer, WeightsError

__all__ = ["CATEGORIES", "DEFAULT_WEIGHTS", "PAPER_CONFIG", "Curves", "Harmonizer", "ModelConfig", "S2CRNet",
           "WeightsError", "count_parameters"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("S2CRNet", "count_parameters"):
        from . import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
