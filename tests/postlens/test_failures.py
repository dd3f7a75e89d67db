"""Failure kinds are defined once (postlens.failures): the dashboards filter only on kinds that exist, and the
stages record members of the enums, never free strings."""

from __future__ import annotations

import json
import re
from pathlib import Path

from postlens.failures import DEAD_LETTER_KINDS, FetchFailure

REPO = Path(__file__).resolve().parents[2]


def test_every_kind_a_dashboard_names_is_a_known_failure_kind() -> None:
    known = DEAD_LETTER_KINDS | set(FetchFailure)
    for dashboard in (REPO / "deploy" / "grafana").glob("*.json"):
        exprs = re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', dashboard.read_text())
        named = {
            kind
            for expr in exprs
            for match in re.finditer(r'kind=~?\\"([^\\]*)\\"', expr)
            for kind in match.group(1).split("|")
        }
        assert named <= known, (dashboard.name, named - known)
        json.loads(dashboard.read_text())


def test_stages_write_no_free_string_kinds() -> None:
    """A failure raised with a string literal as its kind would escape the enums."""
    first = r'(?:InvalidPost|FetchError|ModelFault|RequestRefused)\(\s*"'
    later = r'(?:SinkFailure\([^,()]*,|dead_letter\([^,()]*,[^,()]*,)\s*"'  # after the item; the raw and the stage
    pattern = re.compile(f"{first}|{later}")
    sources = [REPO / "postlens" / "io" / "fetch.py", *(REPO / "stream").rglob("*.py")]
    offenders = [str(path.relative_to(REPO)) for path in sources if pattern.search(path.read_text())]
    assert offenders == []
