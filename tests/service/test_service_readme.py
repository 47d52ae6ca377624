"""The API reference (docs/API.md) agrees with the code: settings table, error codes, metrics, curl example."""

import re

import pytest
from helpers import doc_section

from app.errors import ERROR_CODES
from app.metrics import Metrics
from app.settings import Settings


@pytest.fixture(scope="module")
def section() -> str:
    return doc_section("docs/API.md", "service")


def _rows(section: str, first_cell: str) -> list[list[str]]:
    """Table rows whose first cell matches the regular expression `first_cell`."""
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def test_configuration_table_lists_every_setting_with_its_default(section):
    rows = {cells[0].strip("`"): cells[1] for cells in _rows(section, r"`S2CRNET_\w+`")}
    expected = {f"S2CRNET_{name.upper()}": name for name in Settings.model_fields}
    assert set(rows) == set(expected)
    defaults = Settings(_env_file=None)
    for variable, name in expected.items():
        value = getattr(defaults, name)
        shown = "unset" if value is None else f"`{value}`"
        assert rows[variable] == shown, variable


def test_error_table_matches_the_error_codes(section):
    rows = {cells[1].strip("`"): int(cells[0]) for cells in _rows(section, r"\d{3}")}
    assert rows == {code: status for code, (status, _) in ERROR_CODES.items()}


def test_metrics_table_names_every_exported_metric(section):
    listed = {cells[0].strip("`") for cells in _rows(section, r"`s2crnet_\w+`")}
    suffix = {"counter": "_total", "info": "_info"}  # what the text format appends to these families
    exported = {family.name + suffix.get(family.type, "") for family in Metrics().registry.collect()}
    assert listed == exported


def test_the_issue_example_is_there(section):
    example = ("curl -s --fail-with-body -F composite=@comp.jpg -F mask=@mask.png http://127.0.0.1:8000/harmonize "
               "-o out.jpg")  # --fail-with-body: exit 22 on an error, and keep its JSON (-f would drop it)
    assert example in section
    for start in ("s2crnet serve", "uvicorn app.main:app"):
        assert start in section
