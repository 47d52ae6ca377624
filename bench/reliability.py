"""The full reliability runs (hostile inputs, OpenAPI fuzzing, overload, soak, SIGTERM, security), then their figures.

    nice -n 15 .venv/bin/python bench/reliability.py           # full: ≥ 2,000 hostile requests, 5,000 soak, ...
    nice -n 15 .venv/bin/python bench/reliability.py --fast    # the fast variants the normal test run has

It runs pytest on tests/reliability/ (the full variants are marked `slow`; with --fast the `_fast` ones
instead) and prints the figures the tests record with `record_property` (read back from pytest's JUnit XML),
beside the machine, its load and the date. Exit status: pytest's.
"""

import argparse
import ast
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/reliability"]


def run_pytest(fast: bool, junit: Path) -> int:
    # full: the slow variants and every test that has no fast/full pair; fast: what `pytest -q` runs
    selection = ["-m", "not slow"] if fast else ["-m", "slow or not slow", "-k", "not _fast"]
    command = [sys.executable, "-m", "pytest", "-q", *selection, "-o", "junit_family=legacy",
               f"--junitxml={junit}", *TESTS]
    sys.stdout.write(f"$ {' '.join(command[2:])}\n")
    sys.stdout.flush()
    return subprocess.run(command, cwd=ROOT).returncode


def figures(junit: Path) -> list[tuple[str, str, str]]:
    """(test, figure, value) for every recorded property, in run order."""
    rows = []
    for case in ElementTree.parse(junit).iter("testcase"):
        for prop in case.iter("property"):
            rows.append((case.get("name", ""), prop.get("name", ""), prop.get("value", "")))
    return rows


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} CPUs ({model}) · "
            f"load average {load} · Python {platform.python_version()} · Pillow {version('pillow')} · "
            f"python-multipart {version('python-multipart')}")


def pretty(value: str) -> str:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(parsed, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(parsed.items(), key=lambda item: str(item[0])))
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="run the fast variants instead of the full runs")
    args = parser.parse_args()
    before = machine()
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "reliability.xml"
        code = run_pytest(args.fast, junit)
        rows = figures(junit) if junit.exists() else []
    sys.stdout.write(f"\nstart: {before}\nend:   {machine()}\n\n")
    width = max((len(name) for _, name, _ in rows), default=10)
    test = None
    for case, name, value in rows:
        if case != test:
            sys.stdout.write(f"{case}\n")
            test = case
        sys.stdout.write(f"  {name:<{width}}  {pretty(value)}\n")
    sys.stdout.write(f"\npytest exit status: {code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
