"""The fast subset of ``make chaos``: two faults under load, counted from Elasticsearch and the dead-letter topic.

Runs ``python -m bench.chaos`` itself (its own Kafka, Redis and Triton on free ports; the stack's Elasticsearch
through its proxies), so what is checked is what the full run reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postlens.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_a_killed_worker_and_a_post_published_twice_lose_nothing(settings: Settings, tmp_path: Path) -> None:
    if not (settings.shared_data_dir / "twitter2015" / "valid.txt").is_file():
        pytest.fail(f"the tweets are not under {settings.shared_data_dir} (POSTLENS_SHARED_DATA_DIR)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--faults", "worker_sigkill,same_id_twice", "--rate", "10",
         "--settle-s", "120", "--reports", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["fault"]: row for row in json.loads((tmp_path / "chaos.json").read_text())["rows"]}
    assert set(rows) == {"worker_sigkill", "same_id_twice"}
    for fault, row in rows.items():
        assert not row["notes"], (fault, row["notes"])
        assert row["published"] > 0 and row["indexed"] > 0, (fault, row)
        assert (row["lost"], row["older_version_won"]) == (0, 0), (fault, row)
        assert row["recovery_s"] is not None, (fault, row)
    assert (tmp_path / "chaos.md").read_text().count("| worker_sigkill |") == 1
    assert (tmp_path / "chaos.png").stat().st_size > 0
