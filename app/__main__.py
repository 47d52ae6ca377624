"""`python -m app`: serve with the settings from S2CRNET_* variables (what `s2crnet serve` does)."""

import sys

from pydantic import ValidationError

from .settings import Settings

try:
    settings = Settings()  # before importing torch: bad settings fail in a fraction of a second
except ValidationError as e:
    sys.stderr.write(f"invalid S2CRNET_* settings:\n{e}\n")
    sys.exit(2)

from .main import run  # noqa: E402

run(settings)
