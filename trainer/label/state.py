"""What push and pull remember, in ONE SQLite file both share (``settings.label_state``, under POSTLENS_HOME).

- ``pushed``: posts sent to Label Studio (never sent twice);
- ``annotations``: each (annotation id, update time) already turned into a label, a refusal or a skip, so the poll and
  the webhook receiver — which see the same annotations — publish each version of an annotation once.

Why a file and not a Kafka topic: both paths and push run beside one Label Studio on one host, a lookup must be
immediate (a compacted topic would have to be read whole before every decision) and a transaction makes each step
atomic. A label is published (Kafka acknowledged it) before its row is written: a crash in between publishes it again
on the next pull, with the same label id and content, which ``trainer.retrain`` takes as one label (latest wins).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Outcome = Literal["label", "refused", "skipped"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS pushed (
    post_id TEXT PRIMARY KEY, project_id INTEGER NOT NULL, model_version TEXT, pushed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    annotation_id INTEGER NOT NULL, updated_at TEXT NOT NULL, post_id TEXT, outcome TEXT NOT NULL,
    recorded_at TEXT NOT NULL, PRIMARY KEY (annotation_id, updated_at)
);
"""


class LabelState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The receiver and a poll may write at once: wait for the other's transaction instead of failing.
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def excluded_posts(self) -> set[str]:
        """Posts push must not send: already sent, or already labeled (by any path)."""
        rows = self._db.execute(
            "SELECT post_id FROM pushed UNION SELECT post_id FROM annotations WHERE outcome = 'label'"
        )
        return {post_id for (post_id,) in rows if post_id is not None}

    def record_pushed(self, project_id: int, posts: Iterable[tuple[str, str | None]]) -> None:
        now = _now()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO pushed VALUES (?, ?, ?, ?)",
                [(post_id, project_id, version, now) for post_id, version in posts],
            )

    def seen(self, annotation_id: int, updated_at: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM annotations WHERE annotation_id = ? AND updated_at = ?", (annotation_id, updated_at)
        ).fetchone()
        return row is not None

    def record(self, done: Iterable[tuple[int, str, str | None, Outcome]]) -> None:
        """Remember annotation versions as handled: (annotation id, updated at, post id, outcome)."""
        now = _now()
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO annotations VALUES (?, ?, ?, ?, ?)", [(*row, now) for row in done]
            )


def _now() -> str:
    return datetime.now(UTC).isoformat()
