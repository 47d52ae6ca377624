"""`python -m app`: serve with the settings from S2CRNET_* variables (what `s2crnet serve` does)."""

from .main import run
from .settings import Settings

run(Settings())
