"""S²CRNet image harmonization: network, curve rendering and the `Harmonizer` API."""

from .config import CATEGORIES, PAPER_CONFIG, ModelConfig
from .curves import Curves
from .harmonizer import DEFAULT_WEIGHTS, Harmonizer, WeightsError
from .network import S2CRNet, count_parameters

__all__ = ["CATEGORIES", "DEFAULT_WEIGHTS", "PAPER_CONFIG", "Curves", "Harmonizer", "ModelConfig", "S2CRNet",
           "WeightsError", "count_parameters"]
__version__ = "0.1.0"
