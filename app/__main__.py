"""`python -m app`: serve with the settings from S2CRNET_* variables (what `s2crnet serve` does).

A bad setting exits 2 and weights that cannot be loaded exit 3, each with one line on stderr (app/startup.py).
"""

import sys

from .startup import StartupError, settings_from

try:
    settings = settings_from()  # before importing torch: bad settings fail in a fraction of a second
    from .main import run

    run(settings)
except StartupError as e:
    sys.stderr.write(f"s2crnet: error: {e}\n")
    sys.exit(e.exit_code)
