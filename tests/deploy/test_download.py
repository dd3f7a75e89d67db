"""Downloads are verified against the checksum published beside them, and cached."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from deploy.download import DownloadError, fetch_verified, maven_url


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on localhost, and its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_matching_sha512_is_accepted_and_cached(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    payload = b"elasticsearch zip bytes" * 1000
    (root / "a.zip").write_bytes(payload)
    (root / "a.zip.sha512").write_text(f"{hashlib.sha512(payload).hexdigest()}  a.zip\n")
    dest = fetch_verified(f"{url}/a.zip", tmp_path / "dl" / "a.zip")
    assert dest.read_bytes() == payload

    (root / "a.zip").write_bytes(b"changed upstream")
    assert fetch_verified(f"{url}/a.zip", dest).read_bytes() == payload, "a cached download is not fetched again"


def test_sha1_is_used_when_no_stronger_digest_is_published(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    (root / "b.jar").write_bytes(b"jar")
    (root / "b.jar.sha1").write_text(hashlib.sha1(b"jar").hexdigest())
    assert fetch_verified(f"{url}/b.jar", tmp_path / "b.jar").read_bytes() == b"jar"


def test_mismatch_is_rejected_and_nothing_is_kept(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    (root / "c.zip").write_bytes(b"tampered")
    (root / "c.zip.sha512").write_text(hashlib.sha512(b"original").hexdigest())
    with pytest.raises(DownloadError, match="sha512 mismatch"):
        fetch_verified(f"{url}/c.zip", tmp_path / "c.zip")
    assert list(tmp_path.glob("c.zip*")) == []


def test_missing_checksum_is_an_error(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    (root / "d.zip").write_bytes(b"unverifiable")
    with pytest.raises(DownloadError, match="no checksum"):
        fetch_verified(f"{url}/d.zip", tmp_path / "d.zip")


def test_maven_url_layout() -> None:
    assert maven_url("https://repo/", "org.apache.kafka", "kafka_2.13", "4.3.1", "pom") == (
        "https://repo/org/apache/kafka/kafka_2.13/4.3.1/kafka_2.13-4.3.1.pom"
    )
